"""The onnx engine: sentence embeddings and text classification on onnxruntime.

plugin.py registers it; engine.py loads a model (tokenizer, graph preparation, session); wordpiece.py turns
texts into padded id batches; tasks.py runs embed/classify and builds the results; graph.py edits ONNX
graphs (pooling tail, classifier head, int8 preparation); convert.py is the pull-time conversion of the
intent classifier's head; bench.py is ``corert bench embed|classify``.
"""
