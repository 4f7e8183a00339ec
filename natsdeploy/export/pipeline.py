"""Placeholder until the exporter lands."""
import argparse


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch")


def export_cli(args: argparse.Namespace) -> int:
    raise NotImplementedError
