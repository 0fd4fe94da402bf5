"""Mirror run directories to S3 (or any S3-compatible store), durably queued on disk."""

from dr_exp.sync.config import SyncConfig, load_config, save_config
from dr_exp.sync.handler import SyncHandler
from dr_exp.sync.queue import SyncQueue

__all__ = ["SyncConfig", "SyncHandler", "SyncQueue", "load_config", "save_config"]
