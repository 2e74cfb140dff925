"""Optional integrations with other libraries, one module each, imported only on demand.

``import logitkit`` never imports these modules, nor the libraries they wrap; import the one
you need explicitly:

>>> from logitkit.integrations.transformers import LogitkitLogitsProcessor  # doctest: +SKIP

Modules:

- ``logitkit.integrations.transformers``: ``LogitkitLogitsProcessor``, logitkit's penalties and
  filters as a Hugging Face ``transformers`` logits processor for ``model.generate``.
- ``logitkit.integrations.llama_cpp``: ``LogitkitLogitsProcessor``, a ``logits_processor`` for
  llama-cpp-python's ``Llama``, and ``sample_next``, which draws a model's next token with
  logitkit's whole pipeline from llama.cpp's logits buffer.
"""
