"""`python -m lavis_lite`: print what the registry holds."""
from lavis_lite.common.registry import registry


def main() -> None:
    for kind, names in (("models", registry.list_models()), ("datasets", registry.list_datasets()),
                        ("processors", registry.list_processors()), ("tasks", registry.list_tasks()),
                        ("runners", registry.list_runners()), ("lr_schedulers", registry.list_lr_schedulers())):
        print(f"{kind:14s} {', '.join(names) if names else '(none)'}")
    print(f"{'library_root':14s} {registry.get_path('library_root')}")


if __name__ == "__main__":
    main()
