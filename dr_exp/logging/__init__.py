from dr_exp.logging.structured_logger import StructuredLogger

__all__ = ["StructuredLogger"]
