"""Fill the servers with the synthetic corpus, once, into caches reused by later runs.

pacsnode: rows go straight into its index through its own API (``ArchiveIndex.store``,
one study per call), with no file behind them; the query benchmark reads only the index.
Orthanc: tiny header-only DICOM files posted to its REST API (``POST /instances``) from a
few threads; its storage folder is then kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian

from bench.common import LOOPBACK, ROOT, Server
from bench.query.corpus import CORPUS_VERSION, UID_ROOT, Series, Study, study_list

Say = Callable[[str], None]
PG_ADMIN = "postgresql://postgres@127.0.0.1/postgres"
PG_URL = "postgresql://postgres@127.0.0.1/{db}"
PG_PREFIX = "pacsnode_bench_query_"
ARCHIVE_SRC = ROOT / "src" / "pacsnode" / "archive"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


def size_label(n: int) -> str:
    """10000 -> 10k, 1000000 -> 1M."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def archive_fingerprint() -> str:
    """A hash of pacsnode's archive code (index, schema, migrations): a cached index is only as
    good as the code that wrote it, so a change there means a new cache."""
    h = hashlib.sha256()
    for path in sorted(ARCHIVE_SRC.rglob("*.py")):
        h.update(str(path.relative_to(ARCHIVE_SRC)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:10]


def _write_manifest(folder: Path, info: dict[str, Any]) -> None:
    (folder / "manifest.json").write_text(json.dumps(info, indent=2) + "\n")


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


# --------------------------------------------------------------------------- pacsnode


def _records(study: Study, received_at: datetime, start: int) -> list[Any]:
    """The index records of one study, shaped as pacsnode's header reader would make them."""
    from pacsnode.archive.index import InstanceRecord
    from pacsnode.archive.records import INSTANCE, PATIENT, SERIES, STUDY

    def blank(fields: Sequence[tuple[str, int, str, str, int]]) -> dict[str, Any]:
        return {column: (None if kind == "int" else "") for column, _, _, kind, _ in fields}

    p = study.patient
    patient = blank(PATIENT) | {
        "patient_id": p.id,
        "patient_name": p.name,
        "patient_birth_date": p.birth_date,
        "patient_sex": p.sex,
    }
    st = blank(STUDY) | {
        "study_date": study.date,
        "study_time": study.time,
        "accession_number": study.accession,
        "study_id": str(study.number),
        "study_description": study.description,
    }
    out = []
    n = start
    for s in study.series:
        se = blank(SERIES) | {
            "modality": s.modality,
            "series_number": s.number,
            "series_description": s.description,
            "body_part_examined": "",
        }
        for k in range(s.instances):
            inst = blank(INSTANCE) | {
                "instance_number": k + 1,
                "specific_character_set": "ISO_IR 100",
                "transfer_syntax_uid": EXPLICIT_VR_LE,
            }
            out.append(
                InstanceRecord(
                    sop_instance_uid=s.instance_uid(k),
                    sop_class_uid=s.sop_class_uid,
                    series_instance_uid=s.uid,
                    study_instance_uid=study.uid,
                    patient=patient,
                    study=st,
                    series=se,
                    instance=inst,
                    # No file behind it (C-FIND reads the index only); the column is unique.
                    path=f"objects/synthetic/{n:08d}.dcm",
                    size=1024,
                    sha256="0" * 64,
                    source_ae_title="BENCH",
                    received_at=received_at,
                )
            )
            n += 1
    return out


def fill_index(url: str, size: int, say: Say) -> float:
    """Migrate the index at ``url`` and store the corpus of ``size`` instances; returns seconds."""
    from pacsnode.archive.index import ArchiveIndex

    index = ArchiveIndex(url)
    t0 = time.monotonic()
    try:
        index.migrate()
        received_at = datetime.now(UTC)
        done = 0
        last = t0
        postgres = index.engine.dialect.name == "postgresql"
        analyze_at = [20_000, 100_000, 400_000]
        for study in study_list(size):
            records = _records(study, received_at, done)
            index.store(records, "reject")
            done += len(records)
            if postgres and analyze_at and done >= analyze_at[0]:
                # The planner's statistics of a table that was empty make each duplicate check a
                # sequential scan (fill rate ~400/s at 150k rows) until autovacuum catches up.
                _analyze(index)
                analyze_at.pop(0)
            now = time.monotonic()
            if now - last > 10:
                rate = done / (now - t0)
                say(f"    {done:,} of {size:,} instances, {rate:,.0f}/s, ~{(size - done) / rate:.0f} s left")
                last = now
        if postgres:
            _analyze(index)  # as autovacuum would have done by the time a real archive is queried
        counts = index.counts()
    finally:
        index.dispose()
    if counts.get("instances") != size:
        raise RuntimeError(f"the index holds {counts.get('instances')} instances, not {size}")
    return time.monotonic() - t0


def _analyze(index: Any) -> None:
    with index.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()


def _pg(sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as c:
        cur = c.execute(sql.encode())
        return list(cur.fetchall()) if cur.description else []


def _pg_count(db: str) -> int | None:
    import psycopg

    try:
        with psycopg.connect(PG_URL.format(db=db), connect_timeout=5) as c:
            row = c.execute(b"SELECT count(*) FROM instances").fetchone()
            return int(row[0]) if row else None
    except psycopg.Error:
        return None


def pacsnode_folder(cache: Path, backend: str, size: int, fingerprint: str) -> Path:
    return cache / f"pacsnode-{backend}-{size_label(size)}-c{CORPUS_VERSION}-{fingerprint}"


def prepare_pacsnode(
    cache: Path, backend: str, size: int, say: Say, reuse_stale: bool = False
) -> tuple[Path, list[str]]:
    """A folder (with ``data/``) from which ``pacsnode serve`` answers for the corpus of ``size``.

    Returns the folder and the extra ``serve`` arguments (``--config`` for PostgreSQL).
    Cached by backend, size, corpus version and a fingerprint of pacsnode's archive code.
    """
    fingerprint = archive_fingerprint()
    folder = pacsnode_folder(cache, backend, size, fingerprint)
    pattern = f"pacsnode-{backend}-{size_label(size)}-c{CORPUS_VERSION}-*"
    if reuse_stale and _read_manifest(folder) is None:
        # Any complete cache of this size, whatever code built it (the server migrates it at start).
        for other in sorted(cache.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True):
            if _read_manifest(other) is not None:
                folder = other
                break
    info = _read_manifest(folder)
    db = str(info.get("database", "")) if info else ""
    if info is not None and (backend != "postgresql" or _pg_count(db) == size):
        return folder, _pg_args(folder, db) if db else []
    # Build it: first drop what older code built for this size, then fill a temporary folder.
    for other in cache.glob(pattern):
        old = _read_manifest(other)
        if old and old.get("database"):
            _pg(f'DROP DATABASE IF EXISTS "{old["database"]}" WITH (FORCE)')
        shutil.rmtree(other, ignore_errors=True)
    tmp = cache / f".{folder.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    say(f"  filling pacsnode's {backend} index with {size:,} instances ({size_label(size)}) into {folder}")
    if backend == "sqlite":
        url = f"sqlite:///{(tmp / 'data' / 'index.sqlite').resolve()}"
        db = ""
    else:
        db = f"{PG_PREFIX}{size}_{fingerprint}"
        _pg(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        _pg(f'CREATE DATABASE "{db}"')
        url = PG_URL.format(db=db)
    try:
        seconds = fill_index(url, size, say)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if db:
            with contextlib.suppress(Exception):
                _pg(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        raise
    say(f"    {size:,} instances in {seconds:.0f} s ({size / seconds:,.0f}/s)")
    _write_manifest(
        tmp,
        {
            "backend": backend,
            "size": size,
            "corpus_version": CORPUS_VERSION,
            "archive_fingerprint": fingerprint,
            "database": db,
            "fill_seconds": seconds,
        },
    )
    tmp.rename(folder)
    return folder, _pg_args(folder, db) if db else []


def _pg_args(folder: Path, db: str) -> list[str]:
    config = folder / "pacsnode.toml"
    config.write_text(f'[storage]\nindex_url = "{PG_URL.format(db=db)}"\n')
    return ["--config", str(config)]


def drop_pg_caches() -> list[str]:
    """Drop every database this benchmark created (``--clean``)."""
    names = [r[0] for r in _pg(f"SELECT datname FROM pg_database WHERE datname LIKE '{PG_PREFIX}%'")]
    for name in names:
        _pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return names


# --------------------------------------------------------------------------- Orthanc


def _file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(UID_ROOT + ".0")
    meta.ImplementationVersionName = "PACSNODE_BENCH"
    return meta


def series_template(study: Study, s: Series) -> Dataset:
    """The attributes every instance of a series shares (header only, no pixel data)."""
    p = study.patient
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = s.sop_class_uid
    ds.StudyDate = study.date
    ds.StudyTime = study.time
    ds.AccessionNumber = study.accession
    ds.Modality = s.modality
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study.description
    ds.SeriesDescription = s.description
    ds.PatientName = p.name
    ds.PatientID = p.id
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = p.sex
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = s.uid
    ds.StudyID = str(study.number)
    ds.SeriesNumber = s.number
    return ds


def instance_bytes(template: Dataset, s: Series, k: int) -> bytes:
    """One Part 10 file of the series: the template with its own SOP Instance UID and number."""
    uid = s.instance_uid(k)
    template.file_meta = _file_meta(s.sop_class_uid, uid)
    template.SOPInstanceUID = uid
    template.InstanceNumber = k + 1
    buf = io.BytesIO()
    dcmwrite(buf, template, enforce_file_format=True)
    return buf.getvalue()


def _post_instances(
    http_port: int, jobs: queue.Queue[Study | None], errors: list[str], done: list[int], slot: int
) -> None:
    conn = http.client.HTTPConnection(LOOPBACK, http_port, timeout=120)
    try:
        while True:
            study = jobs.get()
            if study is None or errors:
                return
            for s in study.series:
                template = series_template(study, s)
                for k in range(s.instances):
                    body = instance_bytes(template, s, k)
                    conn.request("POST", "/instances", body, {"Content-Type": "application/dicom"})
                    response = conn.getresponse()
                    text = response.read()
                    if response.status != 200:
                        errors.append(f"POST /instances: HTTP {response.status}: {text[:300]!r}")
                        return
                done[slot] += s.instances  # each thread counts in its own slot
    except (OSError, http.client.HTTPException) as exc:
        errors.append(f"POST /instances: {exc}")
    finally:
        conn.close()


def orthanc_version() -> str:
    import subprocess

    out = subprocess.run(["/usr/sbin/Orthanc", "--version"], capture_output=True, text=True, timeout=30)
    first = out.stdout.splitlines()[0] if out.stdout else "unknown"
    return first.split()[-1]


def orthanc_folder(cache: Path, size: int) -> Path:
    return cache / f"orthanc-{size_label(size)}-c{CORPUS_VERSION}"


def prepare_orthanc(cache: Path, size: int, server_env: dict[str, str], say: Say, threads: int = 4) -> Path:
    """A folder whose ``db/`` is an Orthanc storage holding the corpus of ``size`` instances."""
    folder = orthanc_folder(cache, size)
    version = orthanc_version()
    info = _read_manifest(folder)
    if info is not None and info.get("orthanc") == version:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    tmp = cache / f".{folder.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    say(f"  filling Orthanc with {size:,} instances ({size_label(size)}) by POST /instances into {folder}")
    # No fsync per file while filling (one sync at the end): the content is what matters here.
    server = Server("orthanc-fill", "ORTHANC", tmp, kind="orthanc", orthanc_config={"SyncStorageArea": False})
    t0 = time.monotonic()
    try:
        server.start(server_env)
        jobs: queue.Queue[Study | None] = queue.Queue()
        for study in study_list(size):
            jobs.put(study)
        for _ in range(threads):
            jobs.put(None)
        errors: list[str] = []
        done = [0] * threads
        workers = [
            threading.Thread(
                target=_post_instances, args=(server.http_port, jobs, errors, done, i), daemon=True
            )
            for i in range(threads)
        ]
        for w in workers:
            w.start()
        while any(w.is_alive() for w in workers):
            for w in workers:
                w.join(10)
                if not w.is_alive():
                    continue
                rate = sum(done) / (time.monotonic() - t0)
                say(f"    {sum(done):,} of {size:,} instances, {rate:,.0f}/s")
                break
        if errors:
            raise RuntimeError(errors[0])
        count = orthanc_count(server.http_port)
        if count != size:
            raise RuntimeError(f"Orthanc holds {count} instances, not {size}")
    except BaseException:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    server.stop()
    os.sync()
    seconds = time.monotonic() - t0
    say(f"    {size:,} instances in {seconds:.0f} s ({size / seconds:,.0f}/s)")
    info = {"size": size, "corpus_version": CORPUS_VERSION, "orthanc": version, "seconds": seconds}
    _write_manifest(tmp, info)
    for leftover in ("orthanc.json", "server.log"):
        with contextlib.suppress(OSError):
            (tmp / leftover).unlink()
    tmp.rename(folder)
    return folder


def orthanc_count(http_port: int) -> int:
    conn = http.client.HTTPConnection(LOOPBACK, http_port, timeout=60)
    try:
        conn.request("GET", "/statistics")
        return int(json.loads(conn.getresponse().read())["CountInstances"])
    finally:
        conn.close()


def iter_sizes(text: str) -> Iterator[int]:
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        if not part:
            continue
        mult = 1
        if part.endswith("k"):
            mult, part = 1000, part[:-1]
        elif part.endswith("m"):
            mult, part = 1_000_000, part[:-1]
        yield int(float(part) * mult)
