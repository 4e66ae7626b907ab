"""xrcompare: compare transfer-learning CNN heads on chest X-rays.

A teaching tool, never a diagnostic one.
"""

__version__ = "0.1.0"

#: The three classes every model predicts, in output order.
CLASSES = ("covid", "normal", "pneumonia")
