"""The ``new/`` directory as the FUSE layer sees it: the write package's Protocols
(``ebsfs.write.newdir``), named here for the FUSE layer's modules."""

from ebsfs.write.newdir import Draft, NewDirectory

__all__ = ["Draft", "NewDirectory"]
