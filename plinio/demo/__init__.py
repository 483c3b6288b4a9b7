"""The first thing a new user runs: a complete PIT-SuperNet search on real data.

``python -m plinio.demo`` (or the ``plinio-demo`` console script) searches a small CNN on
scikit-learn's bundled handwritten digits, exports one network per regularization strength,
fine-tunes and evaluates them next to hand-picked fixed-choice networks trained for the same
epochs, repeats this per seed, and writes a Pareto plot, ``results.json``, ``torch.export``
and ONNX files (the ONNX files checked against PyTorch with onnxruntime).

Modules: ``config`` (options), ``extras`` (the optional packages it needs), ``data`` (digits
splits), ``model`` (the supernet CNN and the fixed choices), ``training`` (epoch loops),
``search`` (warm-up / search / fine-tune with the DNAS API), ``costs`` (parameter and MAC
counting of plain models), ``export`` (torch.export, ONNX and the onnxruntime check),
``results`` (what a run measured, per seed), ``summary`` (ranges over seeds), ``machine``
(where it was measured), ``plot`` (Pareto PNG), ``report`` (tables and JSON), ``pipeline``
(the run), ``cli`` (argument parsing and error reporting).
"""
