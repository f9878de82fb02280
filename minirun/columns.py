"""Tables as `docker ps` and `docker images` print them, for both programs' listings."""
import click


def print_table(header: tuple, rows: list[tuple]) -> None:
    """Columns as wide as their widest cell, two spaces apart."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
