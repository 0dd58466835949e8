"""MLflow through ``mlflow`` (extra ``[track]`` installs ``mlflow-skinny``), a local file store by default.

``run.mlflow``: ``tracking_uri`` (default ``file:<job>/mlruns``), ``experiment_name`` (default
``lavis_lite``), ``run_name`` (default: the job id), ``tags``. The run id is kept in
``<job>/trackers.json``: a resumed job continues the same run. MLflow calls the file store
"maintenance mode" and refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``; we set that only when the
tracking URI is a ``file:`` URI."""
from __future__ import annotations

import os
import time

from lavis_lite.common.trackers.base import Tracker, register_tracker


@register_tracker("mlflow")
class MlflowTracker(Tracker):
    package = "mlflow"
    option_keys = frozenset({"tracking_uri", "experiment_name", "run_name", "tags"})

    def start(self, resume_step, state):
        uri = self.options.get("tracking_uri") or "file:" + os.path.join(self.job_dir, "mlruns")
        if str(uri).startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        run_id = state.get("run_id")
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
        else:
            name = self.options.get("experiment_name", "lavis_lite")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            tags = {str(k): str(v) for k, v in dict(self.options.get("tags") or {}).items()}
            run = self.client.create_run(experiment_id, run_name=self.options.get("run_name", self.job_id),
                                         tags=tags)
            run_id = run.info.run_id
            self.client.log_dict(run_id, self.run_config, "config.json")
        self.run_id = run_id
        return {"run_id": run_id, "tracking_uri": uri}

    def log_scalars(self, scalars, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in scalars.items()])

    def finish(self, failed=False):
        if getattr(self, "run_id", None) is not None:
            self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
            self.run_id = None
