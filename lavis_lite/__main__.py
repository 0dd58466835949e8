"""`python -m lavis_lite`: what the registry holds, and every data set with the command that evaluates on it.

    python -m lavis_lite                        # components, then the data sets
    python -m lavis_lite datasets [--markdown]  # only the data sets (markdown: docs/dataset_cards/README.md)
    python -m lavis_lite datasets --update-readme docs/dataset_cards/README.md   # rewrite that file's table
"""
import argparse

from lavis_lite.common.registry import registry


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lavis_lite", description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=("all", "datasets"), default="all")
    parser.add_argument("--markdown", action="store_true", help="the data-set table as markdown")
    parser.add_argument("--update-readme", metavar="PATH", default=None,
                        help="rewrite the table between the zoo-table markers of PATH (docs/dataset_cards/README.md)")
    args = parser.parse_args(argv)
    import lavis_lite  # noqa: F401  (registers the built-in components and plugins)
    from lavis_lite.datasets.builders import zoo_listing

    if args.update_readme:
        changed = zoo_listing.update_readme(args.update_readme, zoo_listing.describe())
        print(f"{args.update_readme}: {'updated' if changed else 'already up to date'}")
        return
    if args.what == "all":
        # Every kind the registry knows, so kinds added later are listed too.
        for kind, table in registry.mapping.items():
            names = sorted(table)
            label = "datasets" if kind == "builder" else kind + "s"
            print(f"{label:14s} {', '.join(names) if names else '(none)'}")
        print(f"{'library_root':14s} {registry.get_path('library_root')}\n")
        print("Data sets (splits, how to evaluate; cards in docs/dataset_cards/):")
    print(zoo_listing.format_table(zoo_listing.describe(), markdown=args.markdown))


if __name__ == "__main__":
    main()
