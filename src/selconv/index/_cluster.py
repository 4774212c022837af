"""Encoding the chunks of an index on a Dask cluster, each chunk one task, retried when Dask cancels it."""

from __future__ import annotations

from selconv.index.photos import encode_images

#: Times a chunk that Dask cancelled (not merely rescheduled) is submitted again before the run fails.
CLUSTER_RETRIES = 3


def encode_on_cluster(client, encoder, chunks: dict, keep, bar, *, settings=None) -> None:
    """Encode ``chunks`` ({shard key: (number, paths)}) as Dask tasks; ``keep(number, EncodedChunk)`` each result.
    ``settings``: the extractor's run-time settings in every task (:func:`~selconv.index.photos.encode_images`).

    The encoder is scattered once to every worker (its network is built there on first use). A task whose
    worker dies is rescheduled by Dask on another worker; a task Dask cancels instead (it can forget one whose
    scattered encoder went with a dying worker: "already forgotten") is submitted again, with the encoder
    scattered again, up to ``CLUSTER_RETRIES`` times per chunk. At most two tasks per worker thread are in
    flight, so results never pile up on the cluster.
    """
    from dask.distributed import as_completed
    from distributed.client import FutureCancelledError

    remote_encoder = client.scatter(encoder, broadcast=True, hash=False)
    pending = list(chunks)[::-1]
    threads = sum(client.nthreads().values()) or 1
    attempts: dict[str, int] = {}
    chunk_of: dict[str, str] = {}  # task key -> shard key

    def submit(key):
        attempts[key] = attempts.get(key, 0) + 1
        task = f"selconv-encode-{key}" + ("" if attempts[key] == 1 else f"-retry{attempts[key] - 1}")
        chunk_of[task] = key
        return client.submit(encode_images, remote_encoder, chunks[key][1], settings=settings, key=task)

    running = as_completed([submit(pending.pop()) for _ in range(min(len(pending), 2 * threads))])
    for future in running:
        key = chunk_of.pop(future.key)
        number, paths = chunks[key]
        try:
            result = future.result()
        except FutureCancelledError:
            if attempts[key] > CLUSTER_RETRIES:
                raise
            remote_encoder = client.scatter(encoder, broadcast=True, hash=False)
            running.add(submit(key))
            continue
        keep(number, result)
        bar.update(len(paths))
        future.release()
        if pending:
            running.add(submit(pending.pop()))
