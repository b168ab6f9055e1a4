"""zfsrepl: replicate ZFS filesystems to another host over SSH, as named services."""

__version__ = "0.1.0"
