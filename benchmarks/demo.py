"""Demo serving under concurrent users: time to first audio and to completion, 1 / 4 / 16 clients.

    python benchmarks/demo.py                        # the default 20-layer architecture, random weights
    python benchmarks/demo.py --tiny                 # a 4-layer model: a smoke run
    python benchmarks/demo.py --checkpoint model.safetensors
    python benchmarks/demo.py --clients 1 4 --seconds 0.5

Starts the demo on 127.0.0.1 (a free port), then for each client count N starts N
gradio_client clients at once (in a process of their own), each asking for `--seconds`
of audio, and prints one JSON line: time to the first streamed chunk and to the
finished result per client (median, p95) and aggregate samples/s. Before that, `engine`
lines compare N concurrent engine requests with one batched `generate` of N streams (no
server). The last line checks the target: N_max clients finish in at most 2x the time
of one client alone.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import threading
import time

import numpy as np
import torch
from gradio_client import Client, handle_file

from wavekit import WaveNet, WaveNetConfig
from wavekit.generation import generate
from wavekit.serving import BatchingEngine

POLL_S = 0.005  # how often a client looks for its first chunk
TINY = WaveNetConfig(layers=4, stacks=1, residual_channels=8, gate_channels=16, skip_channels=16)


def load_model(args: argparse.Namespace) -> WaveNet:
    if args.checkpoint:
        from wavekit import hub

        return hub.load(args.checkpoint)
    torch.manual_seed(0)
    return WaveNet(TINY if args.tiny else WaveNetConfig()).eval()


def stats(values: list[float]) -> dict[str, float | None]:
    """Median and p95 of the clients that finished (NaN: failed); None if none did."""
    done = [v for v in values if v == v]
    if not done:
        return {"median": None, "p95": None}
    return {"median": round(float(np.median(done)), 3), "p95": round(float(np.percentile(done, 95)), 3)}


def engine_vs_batch(model: WaveNet, engine: BatchingEngine, clients: int, samples: int) -> dict:
    """Wall time of `clients` concurrent engine requests and of one batched generate of as many streams."""
    kwargs = {"speaker": 0} if model.config.num_speakers else {}
    mel = None
    if model.config.mel_channels:
        mel = torch.zeros(model.config.mel_channels, max(1, samples // model.config.hop_length))
        samples = None
    started = time.perf_counter()
    requests = [engine.submit(samples, mel=mel, seed=i, **kwargs) for i in range(clients)]
    for request in requests:
        request.result()
    served = time.perf_counter() - started
    started = time.perf_counter()
    batch_mel = None if mel is None else mel.expand(clients, -1, -1)
    generate(model, samples, mel=batch_mel, batch_size=clients, seed=0, **kwargs)
    batched = time.perf_counter() - started
    return {"engine": clients, "engine_s": round(served, 3), "batched_generate_s": round(batched, 3),
            "ratio": round(served / batched, 2)}  # fmt: skip


def run_clients(url: str, args: tuple, count: int) -> dict:
    """`count` clients at once, in a process of their own; each records (first chunk, done) seconds.

    The clients poll their jobs every POLL_S (gradio_client's own iterator wakes every
    millisecond, which in the server's process competed with the server for the GIL) and
    leave the output files on the server (`download_files=False`): on a 2-core machine
    every cycle a client spends is taken from the server. Their CPU time is reported.
    """
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    process = spawn.Process(target=_client_process, args=(url, args, count, results))
    process.start()
    try:
        return results.get(timeout=600)
    finally:
        process.join()


def _client_process(url: str, args: tuple, count: int, results) -> None:
    clients = [Client(url, verbose=False, download_files=False) for _ in range(count)]
    first: list[float] = [float("nan")] * count
    done: list[float] = [float("nan")] * count
    failures: list[str] = []
    start = threading.Barrier(count + 1)
    began = [0.0]

    def client(i: int) -> None:
        start.wait()
        try:
            job = clients[i].submit(*args[:-1], i, api_name="/generate")
            while not job.done():
                if first[i] != first[i] and job.outputs():  # nan: no update seen yet
                    first[i] = time.perf_counter() - began[0]
                time.sleep(POLL_S)
            job.result()
        except Exception as err:  # counted and named in the JSON line; the statistics leave it out
            failures.append(f"{type(err).__name__}: {err}")
            first[i] = float("nan")
            return
        done[i] = time.perf_counter() - began[0]
        if first[i] != first[i]:
            first[i] = done[i]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    began[0] = time.perf_counter()
    cpu = time.process_time()
    start.wait()
    for t in threads:
        t.join()
    cpu = time.process_time() - cpu
    results.put({"first_chunk_s": stats(first), "complete_s": stats(done), "client_cpu_s": round(cpu, 2),
                 "wall_s": max((d for d in done if d == d), default=None), "finished": count - len(failures),
                 "failed": len(failures), "first_failure": failures[0] if failures else None})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a model to load with wavekit.hub.load (default: random weights)")
    parser.add_argument("--tiny", action="store_true", help="a 4-layer random model instead of the 20-layer one")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=1.0, help="audio per client")
    args = parser.parse_args()

    from wavekit.demo import Demo

    model = load_model(args)
    rate = model.config.sample_rate
    samples = int(args.seconds * rate)
    most = max(args.clients)
    engine = BatchingEngine(model, max_batch=most)
    demo = Demo(model, max_queue=most, max_seconds=max(args.seconds, 0.1), engine=engine)
    cfg = model.config
    model_name = f"{cfg.layers}L-R{cfg.residual_channels}-S{cfg.skip_channels}"
    print(json.dumps({"model": model_name, "sample_rate": rate, "threads": torch.get_num_threads()}), flush=True)
    for count in args.clients:
        engine_vs_batch(model, engine, count, min(samples, 256))  # warm up (compilation, layouts)
        print(json.dumps(engine_vs_batch(model, engine, count, samples)), flush=True)

    port = _free_port()
    page = demo.blocks()
    _, url, _ = page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    speaker = demo.speakers[0] if demo.speakers else None
    reference = handle_file(str(demo.example)) if demo.example else None
    request = (speaker, reference, args.seconds, 1.0, 0)
    walls = {}
    try:
        run_clients(url, request, 1)  # warm up the server path
        for count in args.clients:
            result = run_clients(url, request, count)
            wall, finished = result.pop("wall_s"), result.pop("finished")
            if finished == count:  # the target compares runs in which every client got its audio
                walls[count] = wall
            produced = finished * (samples // cfg.hop_length * cfg.hop_length if demo.example else samples)
            record = {"clients": count, "seconds_each": args.seconds, **result,
                      "samples_per_s": round(produced / wall) if wall else None}  # fmt: skip
            print(json.dumps(record), flush=True)
    finally:
        page.close()
        demo.close()
    if 1 in walls and most in walls and most > 1:
        ratio = walls[most] / walls[1]
        print(json.dumps({"target": f"{most} clients <= 2x one client", "ratio": round(ratio, 2), "met": ratio <= 2}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
