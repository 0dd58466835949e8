"""An OpenAI-compatible HTTP server for lavis_lite chat models (FastAPI + uvicorn, extra ``[serve]``).

    python -m lavis_lite.serve --cfg-path JOB_OR_EXPORT [--host 127.0.0.1 --port 8000] [--api-key KEY]

``protocol`` parses requests, ``images`` decodes ``image_url`` parts, ``engine`` batches generation on
one worker thread, ``app`` is the FastAPI application, ``__main__`` the command line."""
