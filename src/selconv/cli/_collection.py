"""``selconv fit``, ``index`` and ``search``: thin presenters of :mod:`selconv.index.build` for a photo collection."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from selconv.cli._common import (
    CommandError,
    add_model_arguments,
    add_speed_arguments,
    bit_length,
    positive_int,
    require_dir,
    speed_settings,
)

_FIT_EXAMPLES = """examples:
  selconv fit ~/photos --out photos.encoder                     # learn on a sample of the collection itself
  selconv fit ~/photos --out photos.encoder --train-dir ~/other --preset 1024 --mask sum
  selconv fit ~/photos --out photos-64bit.encoder --bits 64 --sample 5000 --max-size 1024
  selconv fit ~/photos --out photos.encoder --precision bfloat16 --compile --cuda-graphs --batch-size 64 \\
      --pad-to-multiple 32"""

_INDEX_EXAMPLES = """examples:
  selconv index ~/photos --encoder photos.encoder --out photos.index
  selconv index ~/photos --encoder photos.encoder --out photos.index     # again: adds only new photos
  selconv index ~/photos --encoder photos.encoder --out photos.index --scheduler tcp://10.0.0.5:8786
  selconv index ~/photos --encoder photos.encoder --out photos.index --compile --cuda-graphs --batch-size 64 \\
      --pad-to-multiple 32 --chunk-size 4096

Killed at any moment, rerun the same command: it resumes from the shards kept in INDEX.shards/."""

_SEARCH_EXAMPLES = """examples:
  selconv search photos.index query.jpg
  selconv search photos.index query.jpg --box 120 40 560 400 -k 50 --html results.html
  selconv search photos.index query.jpg --query-expansion 10 --alpha 3"""


def add_collection_commands(commands) -> None:
    """Add ``fit``, ``index`` and ``search`` to the subcommands `commands`."""

    def sub(name, help, examples):
        return commands.add_parser(
            name,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            epilog=examples,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    _add_fit(sub)
    _add_index(sub)
    _add_search(sub)


def _add_fit(sub) -> None:
    from selconv.pipelines import MASKS

    fit = sub("fit", "learn the paper's encoder (a Table 4 preset) on a photo folder and save it", _FIT_EXAMPLES)
    fit.add_argument("photos", type=Path, metavar="PHOTOS", help="the photo collection (walked recursively)")
    fit.add_argument("--out", type=Path, required=True, metavar="ENCODER", help="where to save the fitted encoder")
    fit.add_argument(
        "--train-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="learn on the photos under DIR instead of a sample of PHOTOS",
    )
    fit.add_argument(
        "--sample",
        type=positive_int,
        default=5000,
        metavar="N",
        help="learn on a seeded random sample of N photos (default: %(default)s; the paper learns on "
        "5,000-6,400; fitting holds every sampled conv map in memory)",
    )
    fit.add_argument("--mask", choices=MASKS, default="max", help="local feature mask (default: %(default)s)")
    fit.add_argument(
        "--bits",
        type=bit_length,
        default=None,
        metavar="N",
        help="end with N-bit ITQ codes (a multiple of 8), searched by Hamming distance",
    )
    add_model_arguments(fit, max_size_default=1024)
    fit.add_argument(
        "--precision",
        choices=("float32", "tf32", "bfloat16", "float16"),
        default="float32",
        help="the network's arithmetic, saved with the encoder (default: %(default)s, the paper's; bfloat16 and "
        "float16 run faster on a GPU, with relative errors around 1e-3 to 1e-2)",
    )
    fit.add_argument(
        "--decode",
        choices=("cpu", "device"),
        default="cpu",
        help="where JPEG files are decoded, saved with the encoder: device = nvJPEG on the GPU (pixels differ "
        "slightly from the CPU's; default: %(default)s)",
    )
    add_speed_arguments(fit)
    fit.add_argument("--seed", type=int, default=0, help="seeds the sample and every random stage (default: 0)")


def _add_index(sub) -> None:
    index = sub(
        "index", "encode a photo folder into a searchable index (resumable; adds only new photos)", _INDEX_EXAMPLES
    )
    index.add_argument("photos", type=Path, metavar="PHOTOS", help="the photo collection (walked recursively)")
    index.add_argument("--encoder", type=Path, required=True, metavar="ENCODER", help="written by `selconv fit`")
    index.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="INDEX",
        help="the index folder: created, or extended with the photos not yet in it",
    )
    index.add_argument(
        "--chunk-size",
        type=positive_int,
        default=256,
        metavar="N",
        help="photos per shard: the most a killed run loses (default: %(default)s); each chunk ends with a "
        "part-full batch of each batch shape, so on a GPU with --batch-size 64 thousands per chunk keep batches full",
    )
    index.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="encode on this Dask cluster (e.g. tcp://host:8786) instead of in this process",
    )
    index.add_argument(
        "--kind",
        choices=("flat", "ivf", "hnsw", "pq"),
        default="flat",
        help="faiss index of a new INDEX: flat (exact, default) or approximate for large "
        "collections (ivf and pq are trained on the photos of this run)",
    )
    add_speed_arguments(index)


def _add_search(sub) -> None:
    search = sub("search", "search an index with a photo and print the ranked paths and scores", _SEARCH_EXAMPLES)
    search.add_argument("index", type=Path, metavar="INDEX", help="written by `selconv index`")
    search.add_argument("query", type=Path, metavar="QUERY", help="the query photo")
    search.add_argument(
        "--box",
        type=float,
        nargs=4,
        default=None,
        metavar=("X1", "Y1", "X2", "Y2"),
        help="search with this region of the query only (pixels of the original photo)",
    )
    search.add_argument("-k", type=positive_int, default=20, help="results to show (default: %(default)s)")
    search.add_argument(
        "--query-expansion",
        type=positive_int,
        default=None,
        metavar="K",
        help="alpha-query expansion: add the query's K best matches, weighted by similarity ** ALPHA, and search "
        "again (real-valued indexes; Radenovic et al. use 10; default: off)",
    )
    search.add_argument(
        "--alpha",
        type=float,
        default=3.0,
        help="exponent of the query expansion's weights; 0 is average query expansion (default: %(default)s)",
    )
    search.add_argument(
        "--html",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write a self-contained page with the query and the results' thumbnails",
    )


def fit(args) -> int:
    from selconv.index.build import CollectionError, fit_encoder, list_photos, sample_photos, save_encoder

    try:
        source = args.photos if args.train_dir is None else args.train_dir
        if args.train_dir is not None:
            list_photos(args.photos)  # a mistyped collection is an error even when learning elsewhere
        photos = list_photos(source)
        images = sample_photos(photos, args.sample, random_state=args.seed)
        print(
            f"Learning on {len(images):,} of the {len(photos):,} photos under {source}"
            + (f" (seeded random sample, --sample {args.sample})" if len(images) < len(photos) else "")
            + "."
        )
        report = fit_encoder(
            images,
            preset=args.preset,
            mask=args.mask,
            n_bits=args.bits,
            max_size=args.max_size,
            device=args.device,
            precision=args.precision,
            decode=args.decode,
            random_state=args.seed,
            settings=speed_settings(args),
        )
    except CollectionError as error:
        raise CommandError(str(error)) from error
    _print_skipped(report.skipped)
    codes = f", hashed to {report.n_bits}-bit ITQ codes" if report.n_bits else ""
    print(
        f"Learned on {report.n_images:,} images for {report.dimension}-D descriptors{codes} (preset {args.preset}, "
        f"{args.mask} mask, longest side {args.max_size} px) in {report.seconds:.0f} s."
    )
    for line in report.warnings:
        print(f"warning: {line}")
    path = save_encoder(report.encoder, args.out)
    print(f"Encoder saved to {path}.")
    return 0


def index(args) -> int:
    from selconv.index import IndexFormatError
    from selconv.index.build import CollectionError, index_folder, load_encoder

    client = None
    try:
        encoder = load_encoder(args.encoder)
        if args.scheduler is not None:
            from dask.distributed import Client

            client = Client(args.scheduler)
            print(
                f"Dask cluster {args.scheduler}: {len(client.nthreads())} workers, "
                f"{sum(client.nthreads().values())} threads."
            )
        report = index_folder(
            args.photos,
            encoder,
            args.out,
            chunk_size=args.chunk_size,
            client=client,
            kind=args.kind,
            settings=speed_settings(args),
        )
    except (CollectionError, IndexFormatError) as error:
        raise CommandError(str(error)) from error
    finally:
        if client is not None:
            client.close()
    resumed = (
        f"; {report.n_resumed} of its {report.n_chunks} chunks resumed from an interrupted run"
        if (report.n_resumed)
        else ""
    )
    print(
        f"{report.n_found:,} photos under {args.photos}: {report.n_already:,} already indexed, "
        f"{report.n_added:,} added{resumed}."
    )
    _print_skipped(report.skipped)
    index = report.index
    rate = f" ({report.n_added / report.seconds:.1f} images/s)" if report.n_added else ""
    print(
        f"Index {report.path}: {len(index):,} images, {index.dimension} {_describe_metric(index)}; "
        f"this run took {report.seconds:.0f} s{rate}."
    )
    return 0


def search(args) -> int:
    from selconv.extraction.images import BoxedImage, ImageLoadError, split_box
    from selconv.index import IndexFormatError, load_index
    from selconv.index.search_page import write_search_page

    require_dir(args.index, "INDEX")
    if not args.query.is_file():
        raise CommandError(f"query {args.query} is not a file.")
    try:
        index = load_index(args.index)
    except IndexFormatError as error:
        raise CommandError(str(error)) from error
    if index.encoder is None:
        raise CommandError(f"the index {args.index} has no encoder (built from descriptors): it cannot encode a photo.")
    query = os.fspath(args.query) if args.box is None else BoxedImage(os.fspath(args.query), tuple(args.box))
    expansion = _query_expansion(args, index)
    try:
        split_box(query)
        result = index.search([query], k=args.k, query_expansion=expansion)
    except ImageLoadError as error:
        raise CommandError(f"cannot read the query: {error}") from error
    except ValueError as error:  # a box that is no box, or a crop too small for the network
        raise CommandError(f"--box: {error}" if args.box is not None else str(error)) from error
    found = result.ids[0] >= 0
    scores, paths = result.scores[0][found], [p for p, ok in zip(result.paths[0], found) if ok]
    print(f"{'rank':>4}  {'score':>8}  path")
    for rank, (score, path) in enumerate(zip(scores, paths), start=1):
        print(f"{rank:>4}  {score:>8.4f}  {path}")
    if args.html is not None:
        notes = [f"Index {args.index}: {len(index):,} images, {index.dimension} {_describe_metric(index)}."]
        page = write_search_page(args.html, args.query, scores, paths, box=args.box, notes=notes)
        print(f"Page: {page}")
    return 0


def _query_expansion(args, index):
    """The AlphaQueryExpansion that --query-expansion and --alpha ask for, or None."""
    from selconv.reranking import AlphaQueryExpansion

    if args.query_expansion is None:
        return None
    if not args.alpha >= 0:
        raise CommandError(f"--alpha must be a number >= 0; got {args.alpha}.")
    if index.metric == "hamming":
        raise CommandError("--query-expansion needs real-valued descriptors; this index holds binary codes.")
    return AlphaQueryExpansion(args.query_expansion, alpha=args.alpha)


def _describe_metric(index) -> str:
    return "bits per code, Hamming distance" if index.metric == "hamming" else "dimensions, inner product"


def _print_skipped(skipped) -> None:
    if skipped:
        print(f"Skipped {len(skipped)} unreadable file(s):")
        for path, reason in skipped:
            print(f"  {reason}" if reason.startswith(path) else f"  {path}: {reason}")
