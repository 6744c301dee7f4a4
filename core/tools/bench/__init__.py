"""The benchmarks behind ``corert bench NAME``, one module per case (corert.tools.cases lists them).  Each
runs the competitor and corert on the same input, interleaved over >= 3 rounds, and reports the median ratio
with its min-max spread."""
