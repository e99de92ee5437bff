"""LeRobotDataset (format v3.0, lerobot >= 0.4) to and from dp's zarr layout.

    dp-data import-lerobot DIR OUT.zarr       # parquet + mp4 -> data/<key>[T, ...], meta/episode_ends
    dp-data export-lerobot IN.zarr DIR        # and back: a dataset lerobot's LeRobotDataset(root=DIR) loads

LeRobot's layout (what lerobot's own writer produces; tests/fixtures/lerobot_v3_tiny was written by it)::

    meta/info.json                 codebase_version "v3.0", fps, features {name: {dtype, shape, names}}
    meta/tasks.parquet             task strings (the pandas index) -> task_index
    meta/episodes/chunk-*/file-*.parquet   per episode: length, tasks, dataset_from/to_index, and per
                                   video key its file and from/to_timestamp inside it
    data/chunk-*/file-*.parquet    one row per frame: each feature, timestamp, frame_index, episode_index,
                                   index, task_index (many episodes per file)
    videos/<key>/chunk-*/file-*.mp4  a camera's frames, many episodes per file (AV1 by default)

Names: ``action`` stays; ``observation.images.<cam>`` becomes ``<cam>_image`` (robomimic's camera
naming), any other ``observation.<x>`` becomes ``<x>`` with dots as underscores (so
``observation.state`` is ``state``). The mapping is kept in the store's ``lerobot.features`` attribute,
and export uses it to give the original names back; an export records the dp keys in info.json's
``dp_keys``, so a round trip keeps them too. Per-frame ``task_index`` becomes ``data/task_id``
with the task strings as the store's ``instructions`` (what dp's language policies read).

Needs the ``[lerobot]`` extra (pyarrow, av); lerobot itself is not a dependency.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from dp.data.atomic import atomic_store
from dp.data.errors import DatasetError
from dp.data.replay_buffer import ReplayBuffer
from dp.data.validate import validate

VERSION = "v3.0"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
CODEC = "libsvtav1"  # lerobot's default video codec (AV1, yuv420p)


def _needs():
    try:
        import av  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as e:
        raise DatasetError(f"LeRobot datasets need pyarrow and av ({e}): pip install 'dp[lerobot]' "
                           f"(make setup installs them).") from None


def dp_name(feature: str) -> str:
    """LeRobot feature name -> dp store key."""
    if feature == "action":
        return "action"
    if feature.startswith("observation.images."):
        return feature.removeprefix("observation.images.").replace(".", "_") + "_image"
    return feature.removeprefix("observation.").replace(".", "_")


def lerobot_name(key: str, keys: list[str], frames: bool) -> str:
    """dp store key -> LeRobot feature name (for a store not imported from LeRobot). A store with
    ``agent_pos`` gives it as ``observation.state`` (the robot's own state, as lerobot's policies read it)
    and its full ``state`` as ``observation.environment_state``."""
    if key == "action":
        return "action"
    if frames:
        camera = "image" if key == "img" else key.removesuffix("_image")
        return f"observation.images.{camera}"
    if key == "agent_pos":
        return "observation.state"
    if key == "state":
        return "observation.environment_state" if "agent_pos" in keys else "observation.state"
    return f"observation.{key}"


# ----------------------------------------------------------------------------------------- import
def _column(table, name: str, shape: list[int], dtype: str) -> np.ndarray:
    """A parquet column as numpy [N, *shape] (fixed-size or variable lists flattened back)."""
    import pyarrow as pa

    col = table.column(name).combine_chunks()
    n = len(col)
    while pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
        col = col.flatten()
    values = col.to_numpy(zero_copy_only=False).astype(dtype)
    return values.reshape(n, *[int(s) for s in shape]) if list(shape) != [1] else values.reshape(n, 1)


def _decode_video(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """All frames of an mp4: (uint8 [N, H, W, 3], their timestamps in seconds [N])."""
    import av

    frames, times = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.pts * stream.time_base))
    if not frames:
        raise DatasetError(f"{path}: no video frames could be decoded.")
    return np.stack(frames), np.asarray(times)


def _read_parquets(root: Path, folder: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((root / folder).glob("chunk-*/file-*.parquet"))
    if not files:
        raise DatasetError(f"{root}: no {folder}/chunk-*/file-*.parquet files; expected LeRobot's v3.0 layout.")
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def read_lerobot(root: str | os.PathLike) -> tuple[list[dict], dict]:
    """A LeRobot v3.0 dataset directory -> (episodes as {dp key: array [T, ...]}, store attributes)."""
    _needs()
    import pyarrow.parquet as pq

    root = Path(root)
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise DatasetError(f"{root} is not a LeRobot dataset: it has no meta/info.json. Expected a directory that "
                           f"LeRobotDataset(repo_id, root=DIR) loads (format {VERSION}).")
    info = json.loads(info_path.read_text())
    version = str(info.get("codebase_version", "?"))
    if not version.startswith("v3"):
        raise DatasetError(f"{root}: LeRobot format {version}; dp reads {VERSION}. Convert it with lerobot's "
                           f"`python -m lerobot.datasets.v30.convert_dataset_v21_to_v30 --repo-id=... ` first.")
    fps = float(info["fps"])
    features = {k: v for k, v in info["features"].items() if k not in BOOKKEEPING}
    table = _read_parquets(root, "data")
    order = np.argsort(_column(table, "index", [1], "int64")[:, 0], kind="stable")
    table = table.take(order)
    episode_of = _column(table, "episode_index", [1], "int64")[:, 0]
    frame_of = _column(table, "frame_index", [1], "int64")[:, 0]
    episodes_meta = _read_parquets(root, "meta/episodes").to_pydict()
    columns: dict[str, np.ndarray] = {}
    names = {}
    given = info.get("dp_keys") or {}  # written by dp's export: the store keys the features came from
    for name, spec in features.items():
        key = given.get(name) or dp_name(name)
        if key in names:
            raise DatasetError(f"{root}: features {names[key]!r} and {name!r} both map to dp key {key!r}.")
        names[key] = name
        if spec["dtype"] in ("video", "image"):
            continue
        columns[key] = _column(table, name, spec["shape"], "float32" if spec["dtype"].startswith("float")
                               else spec["dtype"])
    if "task_index" in table.column_names:
        columns["task_id"] = _column(table, "task_index", [1], "int64")[:, 0]
    cameras = [n for n, s in features.items() if s["dtype"] == "video"]
    videos = {n: {} for n in cameras}  # feature -> (chunk, file) -> (frames, times)
    images = [n for n, s in features.items() if s["dtype"] == "image"]

    episodes = []
    starts = np.flatnonzero(np.r_[True, episode_of[1:] != episode_of[:-1]])
    bounds = list(zip(starts, np.r_[starts[1:], len(episode_of)]))
    meta_rows = {int(e): i for i, e in enumerate(episodes_meta["episode_index"])}
    for s, e in bounds:
        ep = int(episode_of[s])
        if not np.array_equal(frame_of[s:e], np.arange(e - s)):
            raise DatasetError(f"{root}: episode {ep}'s frame_index is not 0..{e - s - 1} in index order.")
        out = {k: v[s:e] for k, v in columns.items()}
        row = meta_rows.get(ep)
        if row is None and cameras:
            raise DatasetError(f"{root}: episode {ep} is not in meta/episodes; its video frames cannot be located.")
        for cam in cameras:
            where = (int(episodes_meta[f"videos/{cam}/chunk_index"][row]), int(episodes_meta[f"videos/{cam}/file_index"][row]))
            if where not in videos[cam]:
                path = root / info.get("video_path", VIDEO_PATH).format(video_key=cam, chunk_index=where[0],
                                                                        file_index=where[1])
                videos[cam][where] = _decode_video(path)
            frames, times = videos[cam][where]
            start = float(episodes_meta[f"videos/{cam}/from_timestamp"][row])
            index = np.rint((times - start) * fps).astype(np.int64)
            pick = np.searchsorted(index, np.arange(e - s))
            if pick.max(initial=0) >= len(index) or not np.array_equal(index[np.minimum(pick, len(index) - 1)],
                                                                         np.arange(e - s)):
                raise DatasetError(f"{root}: the video of {cam} lacks frames of episode {ep} (from {start:.3f} s at "
                                   f"{fps:g} fps, {e - s} frames).")
            out[given.get(cam) or dp_name(cam)] = frames[pick]
        for name in images:  # PNG/JPEG bytes in the parquet rows
            import imageio.v3 as iio

            cells = table.column(name).slice(s, e - s).to_pylist()
            out[given.get(name) or dp_name(name)] = np.stack([iio.imread(c["bytes"]) for c in cells]).astype(np.uint8)
        episodes.append(out)
    tasks = pq.read_table(root / "meta" / "tasks.parquet").to_pydict()
    text = next((k for k in tasks if k not in ("task_index",)), None)
    instructions = [""] * (max(tasks["task_index"], default=-1) + 1)
    for i, t in zip(tasks["task_index"], tasks[text] if text else []):
        instructions[int(i)] = str(t)
    attrs = {"source": "lerobot", "source_dir": str(root), "fps": fps, "robot_type": info.get("robot_type"),
             "lerobot": {"version": version, "features": names, "info_features": features}}
    if "task_id" in columns and instructions:
        attrs["instructions"] = instructions
    return episodes, attrs


def import_lerobot(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False) -> ReplayBuffer:
    """Write a LeRobot v3.0 dataset as a dp store (atomically; validated before it is moved into place)."""
    episodes, attrs = read_lerobot(src)
    with atomic_store(dst, overwrite=overwrite) as tmp:
        out = ReplayBuffer.create(tmp)
        for ep in episodes:
            out.add_episode(ep)
        out.attrs.update(attrs)
        validate(out)
    return ReplayBuffer.open(dst)


# ----------------------------------------------------------------------------------------- export
def _encode_video(path: Path, frames: np.ndarray, fps: float) -> None:
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration at level 3 (the default)
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(CODEC, rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "20", "preset": "8"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image[..., :3]), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _stats(x: np.ndarray, frames: bool) -> dict:
    """lerobot's per-feature statistics (images: per channel, in [0, 1], shaped [C, 1, 1])."""
    if frames:
        v = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
        shape = lambda a: a.reshape(-1, 1, 1).tolist()  # noqa: E731
    else:
        v = x.reshape(len(x), -1).astype(np.float64)
        shape = lambda a: a.tolist()  # noqa: E731
    out = {k: shape(f(v, axis=0)) for k, f in (("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std))}
    out["count"] = [int(len(x))]
    for q in (1, 10, 50, 90, 99):
        out[f"q{q:02d}"] = shape(np.quantile(v, q / 100, axis=0))
    return out


def _list_column(x: np.ndarray):
    import pyarrow as pa

    flat = x.reshape(len(x), -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def export_lerobot(src: str | os.PathLike, dst: str | os.PathLike, fps: float | None = None,
                   robot_type: str | None = None, overwrite: bool = False) -> dict:
    """Write a dp store as a LeRobot v3.0 dataset directory (one data file, one video file per camera);
    returns its info.json. Written beside ``dst`` and renamed into place."""
    _needs()
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = ReplayBuffer.open(src)
    attrs = dict(buffer.attrs)
    fps = float(fps or attrs.get("fps") or 10)
    fps = int(fps) if fps.is_integer() else fps  # lerobot writes an integer rate
    keys = [k for k in buffer.keys() if k != "task_id"]
    original = (attrs.get("lerobot") or {}).get("features") or {}
    data = {k: np.asarray(buffer.data[k][:]) for k in buffer.keys()}
    frames = {k for k in keys if data[k].ndim == 4 and data[k].dtype == np.uint8}
    names = {k: original.get(k) or lerobot_name(k, keys, k in frames) for k in keys}
    if "action" not in names:
        raise DatasetError(f"{src} has no data/action; a LeRobot dataset needs actions.")
    ends = np.asarray(buffer.episode_ends[:], dtype=np.int64)
    starts = np.r_[0, ends[:-1]]
    lengths = ends - starts
    n, n_eps = int(ends[-1]) if len(ends) else 0, len(ends)
    instructions = list(attrs.get("instructions") or [])
    task_id = data["task_id"].astype(np.int64) if "task_id" in data else np.zeros(n, np.int64)
    if not instructions:
        instructions = [str(attrs.get("task") or (attrs.get("tasks") or ["task"])[0])]
    frame_index = np.concatenate([np.arange(L) for L in lengths]) if n_eps else np.zeros(0, np.int64)
    episode_index = np.repeat(np.arange(n_eps), lengths)

    out = Path(dst)
    if out.exists() and not overwrite:
        raise DatasetError(f"{out} already exists; pass --overwrite or choose another directory.")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    try:
        features, columns, stats = {}, {}, {}
        for k in keys:
            x = data[k]
            if k in frames:
                h, w, c = x.shape[1:]
                features[names[k]] = {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                                      "info": {"video.height": h, "video.width": w, "video.codec": "av1",
                                               "video.pix_fmt": "yuv420p", "video.is_depth_map": False,
                                               "video.fps": fps, "video.channels": 3, "has_audio": False}}
                _encode_video(tmp / VIDEO_PATH.format(video_key=names[k], chunk_index=0, file_index=0), x, fps)
            else:
                x = x.astype(np.float32) if x.dtype.kind == "f" else x
                shape = list(x.shape[1:]) or [1]
                features[names[k]] = {"dtype": str(x.dtype), "shape": shape, "names": None}
                columns[names[k]] = _list_column(x)
            stats[names[k]] = _stats(x, k in frames)
        timestamp = (frame_index / fps).astype(np.float32)
        bookkeeping = {"timestamp": timestamp, "frame_index": frame_index, "episode_index": episode_index,
                       "index": np.arange(n), "task_index": task_id}
        for name, x in bookkeeping.items():
            features[name] = {"dtype": str(x.dtype), "shape": [1], "names": None}
            columns[name] = pa.array(x)
            stats[name] = _stats(x[:, None], False)
        (tmp / "data" / "chunk-000").mkdir(parents=True)
        pq.write_table(pa.table(columns), tmp / DATA_PATH.format(chunk_index=0, file_index=0))
        # tasks: the strings are the pandas index of a task_index column, as lerobot writes them
        pandas_meta = {"index_columns": ["__index_level_0__"], "column_indexes": [
            {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
             "metadata": {"encoding": "UTF-8"}}], "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None}], "attributes": {}, "creator": {"library": "pyarrow", "version": pa.__version__},
            "pandas_version": "2.2.0"}
        tasks = pa.table({"task_index": pa.array(np.arange(len(instructions)), pa.int64()),
                          "__index_level_0__": pa.array(instructions, pa.string())})
        (tmp / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
        pq.write_table(tasks.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), tmp / "meta" / "tasks.parquet")
        time_from = starts / fps
        episodes = {"episode_index": pa.array(np.arange(n_eps)),
                    "tasks": pa.array([[instructions[int(task_id[s])]] for s in starts], pa.list_(pa.string())),
                    "length": pa.array(lengths), "data/chunk_index": pa.array(np.zeros(n_eps, np.int64)),
                    "data/file_index": pa.array(np.zeros(n_eps, np.int64)),
                    "dataset_from_index": pa.array(starts.astype(np.int64)), "dataset_to_index": pa.array(ends)}
        for k in sorted(frames):
            v = names[k]
            episodes[f"videos/{v}/chunk_index"] = pa.array(np.zeros(n_eps, np.int64))
            episodes[f"videos/{v}/file_index"] = pa.array(np.zeros(n_eps, np.int64))
            episodes[f"videos/{v}/from_timestamp"] = pa.array(time_from.astype(np.float64))
            episodes[f"videos/{v}/to_timestamp"] = pa.array((ends / fps).astype(np.float64))
        episodes["meta/episodes/chunk_index"] = pa.array(np.zeros(n_eps, np.int64))
        episodes["meta/episodes/file_index"] = pa.array(np.zeros(n_eps, np.int64))
        pq.write_table(pa.table(episodes), tmp / EPISODES_PATH.format(chunk_index=0, file_index=0))
        info = {"codebase_version": VERSION, "robot_type": robot_type or attrs.get("robot_type") or "unknown",
                "total_episodes": n_eps, "total_frames": n, "total_tasks": len(instructions), "chunks_size": 1000,
                "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": fps,
                "splits": {"train": f"0:{n_eps}"}, "data_path": DATA_PATH, "video_path": VIDEO_PATH if frames else None,
                "features": features, "dp_keys": {names[k]: k for k in keys}}
        (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=4))
        (tmp / "meta" / "stats.json").write_text(json.dumps(stats, indent=4))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info
