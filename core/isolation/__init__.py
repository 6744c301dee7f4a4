"""Process isolation (``Runtime(isolation="process")``): each loaded model runs in a supervised worker
process, so a crash, a hang or a runaway model costs the requests it was serving, never the host.

channel.py: one worker process and its sockets · framing.py: the messages on them · worker.py: the
worker's side · supervisor.py: restart policy and the host-side queue of one model · pool.py: a Runtime's
workers · limits.py: what a worker limits itself to.
"""
