"""Trainers with the dr_exp contract: ``train(*, job_id, worker_id, storage_path, **config) -> dict``."""
