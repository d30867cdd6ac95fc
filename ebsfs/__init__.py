"""ebsfs: Amazon EBS snapshots as files, through the EBS direct APIs."""

__version__ = "0.1.0"

__all__ = ["__version__"]
