"""The first thing a new user runs: a complete PIT-SuperNet search on real data.

``python -m plinio.demo`` (or the ``plinio-demo`` console script) searches a small CNN on
scikit-learn's bundled handwritten digits, exports one network per regularization strength,
fine-tunes and evaluates them, and writes a Pareto plot, ``results.json``, ``torch.export``
and ONNX files (the ONNX files checked against PyTorch with onnxruntime).

Modules: ``config`` (options), ``data`` (digits splits), ``model`` (the supernet CNN),
``training`` (epoch loops), ``search`` (warm-up / search / fine-tune with the DNAS API),
``costs`` (parameter and MAC counting of plain models), ``export`` (torch.export, ONNX and the
onnxruntime check), ``plot`` (Pareto PNG), ``results`` (what a run measured), ``report``
(table and JSON), ``pipeline`` (the run), ``cli`` (argument parsing and error reporting).
"""
