"""The vocabularies of featstore's options, in one place and importable without torch.

The stages validate against these tuples; the CLI turns them into enums, so ``--help``
lists the choices.
"""

TASKS = ("binary", "multiclass", "ordinal", "multilabel")
PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = ("float32", "float16")
ON_ERROR = ("fail", "skip")
PROBES = ("linear", "knn")
ORDINAL_DECODES = ("argmax", "expected")
ATTENTIONS = ("softmax", "sigmoid", "uniform")
