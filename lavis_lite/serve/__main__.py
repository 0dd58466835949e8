"""``python -m lavis_lite.serve``: load a model (as chat.py / predict.py do) and serve it on 127.0.0.1."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from lavis_lite.inference_utils import add_model_arguments, settings_from_args

API_KEY_ENV = "LAVIS_LITE_API_KEY"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="OpenAI-compatible chat server for a lavis_lite model")
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-name", default=None, help="the id clients pass as model (default: the folder name)")
    parser.add_argument("--api-key", default=None, help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV})")
    parser.add_argument("--allow-local-images", default=None, metavar="DIR",
                        help="also accept image_url paths to files inside DIR (default: data: URLs only)")
    parser.add_argument("--max-images", type=int, default=4, help="images per request")
    parser.add_argument("--max-tokens", type=int, default=512, help="largest max_tokens a request may ask for")
    parser.add_argument("--max-body-mb", type=float, default=20.0, help="request bodies above this get 413")
    parser.add_argument("--max-batch-size", type=int, default=8, help="requests answered by one generate call")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0,
                        help="how long the worker waits for more requests to batch with the first")
    return parser.parse_args(argv)


def model_name_for(cfg_path: str) -> str:
    path = os.path.abspath(os.path.expanduser(cfg_path))
    name = os.path.basename(path if os.path.isdir(path) else os.path.dirname(path) if
                            os.path.basename(path) == "config.yaml" else os.path.splitext(path)[0])
    return f"lavis_lite/{name}"


def build_app(args):
    from lavis_lite.inference_utils import load_model_from_cfg
    from lavis_lite.serve.app import create_app
    from lavis_lite.serve.engine import Engine
    from lavis_lite.serve.protocol import ServeLimits

    settings = settings_from_args(args)
    if settings is None:
        raise SystemExit(2)
    if args.allow_local_images and not os.path.isdir(args.allow_local_images):
        raise SystemExit(f"error: --allow-local-images {args.allow_local_images!r} is not a folder")
    model, image_processor, _ = load_model_from_cfg(args.cfg_path, args.checkpoint, args.device, args.options)
    engine = Engine(model, image_processor, args.max_batch_size, args.batch_wait_ms / 1000.0)
    limits = ServeLimits(max_images=args.max_images, max_tokens=args.max_tokens,
                         allowed_image_dir=args.allow_local_images)
    defaults = settings.as_kwargs()
    defaults["max_new_tokens"] = min(defaults["max_new_tokens"], args.max_tokens)
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    name = args.model_name or model_name_for(args.cfg_path)
    app = create_app(engine, name, defaults, limits, api_key, int(args.max_body_mb * 2 ** 20))
    return app, name, api_key


def main(argv=None):
    args = parse_args(argv)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise SystemExit("python -m lavis_lite.serve needs FastAPI and uvicorn: pip install 'lavis-lite[serve]'") \
            from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] %(name)s: %(message)s")
    app, name, api_key = build_app(args)
    print(f"serving {name} on http://{args.host}:{args.port}/v1 (API key {'required' if api_key else 'off'})",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    app.state.engine.close()


if __name__ == "__main__":
    main()
