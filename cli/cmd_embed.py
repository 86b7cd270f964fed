"""``fsd embed``: embeddings (and flipped embeddings) of a folder of face images, aligned by landmarks."""

from __future__ import annotations

from pathlib import Path

import click

from cli.options import TEACHER_SPEC_HELP, device_option, overwrite_option, quiet_option, trust_code_option
from distill.evaluation.face import embed_folder, load_face_model
from distill.models.inference import select_device

PATH = click.Path(path_type=Path)


@click.command("embed")
@click.option("--model", required=True, metavar="MODEL", help="fsd checkpoint or " + TEACHER_SPEC_HELP)
@trust_code_option
@click.option("--images", type=PATH, required=True, help="Folder of images (searched recursively).")
@click.option(
    "--landmarks",
    type=PATH,
    default=None,
    help="IJB *_name_5pts_score.txt: align each listed face to the 112×112 ArcFace template first.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="HDF5 to write.")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option(
    "--image-size",
    type=click.IntRange(min=1),
    default=None,
    metavar="S",
    help="Feed the model S×S faces (default: its input size, else 112).",
)
@device_option
@overwrite_option
@quiet_option
def command(model, trust_code, images, landmarks, out, batch_size, image_size, device, overwrite, quiet) -> None:
    """Embed face images with --model into an HDF5 file, as `fsd eval --ijb-meta` reads it.

    Every image of --images (or every face --landmarks lists, aligned) is embedded, plain and flipped; the
    file holds embeddings, embeddings_flip and names.

    Example: fsd embed --model student.pt --images IJBC/loose_crop --landmarks
    IJBC/meta/ijbc_name_5pts_score.txt --out ijbc.h5
    """
    if batch_size <= 0:
        from featstore.errors import InvalidInput

        raise InvalidInput(f"--batch-size must be positive, got {batch_size}")
    face_model = load_face_model(model, trust_code=trust_code, image_size=image_size)
    count = embed_folder(
        face_model,
        images,
        out,
        landmarks=landmarks,
        device=select_device(device),
        batch_size=batch_size,
        overwrite=overwrite,
        show_progress=not quiet,
    )
    click.echo(f"embedded {count} {'aligned faces' if landmarks else 'images'} with {face_model.name} → {out}")
