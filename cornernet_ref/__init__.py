r"""cornernet-ref: an annotated reference implementation of CornerNet (Law & Deng, ECCV 2018).

One small module per section of the paper; start with :mod:`cornernet_ref.targets`.
"""

from cornernet_ref.output import CornerNetOutput

__all__ = ["CornerNetOutput", "__version__"]
__version__ = "0.1.0"
