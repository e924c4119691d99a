"""Where a spec's weights live on this machine, and how to fetch them where there is network.

Resolution order for a spec's release file (first hit wins; ``featstore models`` prints it):

1. an explicit path after ``@`` on the command line;
2. each folder of ``$FEATSTORE_WEIGHTS_DIR`` (``os.pathsep``-separated: a team's shared disk);
3. torch hub's checkpoint cache, ``$TORCH_HOME/hub/checkpoints`` (where torchvision and
   ``torch.hub.load_state_dict_from_url`` put downloads).

For ``timm:<model>[.<tag>]`` with no ``@``: the Hugging Face cache (``$HF_HUB_CACHE``; timm's
own resolution, honouring ``HF_HUB_OFFLINE``), then torch hub's cache for the tag's URL.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from featstore.errors import WeightsNotFoundError

if TYPE_CHECKING:
    from featstore.models.registry import BackboneSpec

WEIGHTS_DIR_ENV = "FEATSTORE_WEIGHTS_DIR"
HF_FILES = ("model.safetensors", "pytorch_model.bin")


def _torch_hub_checkpoints() -> Path:
    """torch hub's checkpoint cache, ``torch.hub.get_dir()/checkpoints``, without importing torch.

    Until torch is imported nobody can have called ``torch.hub.set_dir``, so the folder is
    ``get_dir``'s default, computed from the same environment variables.
    """
    if "torch" in sys.modules:
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints"
    cache = os.getenv("XDG_CACHE_HOME", "~/.cache")
    home = os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))
    return Path(home) / "hub" / "checkpoints"


def weights_dirs() -> list[Path]:
    """Folders searched for release files, in order."""
    dirs = [Path(p).expanduser() for p in os.environ.get(WEIGHTS_DIR_ENV, "").split(os.pathsep)
            if p]
    return [*dirs, _torch_hub_checkpoints()]


def _timm_cfg(architecture: str):
    import timm.models

    return timm.models.get_pretrained_cfg(architecture, allow_unregistered=False)


def find_weights(spec: BackboneSpec) -> Path | None:
    """The local file the spec would load, or None when it is not on this machine."""
    if spec.weights:
        p = Path(spec.weights).expanduser()
        return p if p.is_file() else None
    if spec.weights_file:
        for d in weights_dirs():
            if (d / spec.weights_file).is_file():
                return d / spec.weights_file
        return None
    cfg = _timm_cfg(spec.architecture)
    if cfg is not None and cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for name in HF_FILES:
            hit = try_to_load_from_cache(cfg.hf_hub_id, name)
            if isinstance(hit, str):
                return Path(hit)
    if cfg is not None and cfg.url:
        p = _torch_hub_checkpoints() / Path(cfg.url).name
        if p.is_file():
            return p
    return None


def where_to_put(spec: BackboneSpec) -> str:
    """A human description of where the spec's weights are expected."""
    if spec.weights:
        return spec.weights
    if spec.weights_file:
        return str(weights_dirs()[0])
    from huggingface_hub.constants import HF_HUB_CACHE

    cfg = _timm_cfg(spec.architecture)
    repo = cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else spec.architecture
    return f"{HF_HUB_CACHE} (Hugging Face repo {repo})"


def resolve_weights(spec: BackboneSpec) -> Path:
    """The weights file to load for ``spec``.

    Raises
    ------
    WeightsNotFoundError
        Names the file, the folder to put it in, and the command that downloads it.
    """
    found = find_weights(spec)
    if found is not None:
        return found
    if spec.weights:
        raise WeightsNotFoundError(
            f"backbone {spec.alias}: checkpoint not found: {Path(spec.weights).expanduser()} "
            "(place the file there, or give another path after '@')"
        )
    fetch = (f"on a machine with network: featstore models --download {spec.name}"
             if spec.url or not spec.weights_file else spec.manual_download)
    if not spec.weights_file:  # a timm tag: timm's own caches
        raise WeightsNotFoundError(
            f"backbone {spec.name}: pretrained weights not in the local caches: expected in "
            f"{where_to_put(spec)}, or pass {spec.name}@/path/to/file; {fetch}"
        )
    raise WeightsNotFoundError(
        f"backbone {spec.name}: weights not on this machine: put {spec.weights_file} in "
        f"{where_to_put(spec)} (or in a folder named by ${WEIGHTS_DIR_ENV}, or pass "
        f"{spec.name}@/path/to/file); {fetch}"
    )


def spec_text(spec: BackboneSpec) -> str:
    """The spec as the command line wrote it: ``NAME[@WEIGHTS]``."""
    return f"{spec.name}@{spec.weights}" if spec.weights else spec.name


def download_weights(spec: BackboneSpec, folder: Path | None = None) -> Path | None:
    """Download the spec's release file (needs network); returns where it was written.

    Release files go to ``folder`` (default: the first weights folder), through a temporary
    file beside it that is moved into place only once the whole file (as many bytes as the
    server announced) has arrived; timm tags go through timm's own download into the Hugging
    Face cache, once the hub answered one request (offline, no retries). Nothing is
    downloaded for ``@random`` (made when the network is built: returns None) or
    ``@path`` (the file given: returns it).

    Raises
    ------
    WeightsNotFoundError
        The file after ``@`` is not there; no download URL, no such pretrained model, or
        the download failed (no network, a host or proxy refusing, the connection cut, the
        file gone): one message naming the spec as given, the URL or hub and why
        (``--debug`` shows the cause's traceback).
    """
    given = spec_text(spec)
    if spec.is_random:
        return None
    if spec.weights:
        path = Path(spec.weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"{given}: nothing to download (the weights are the file after '@'), and "
                f"{path} is not there; place it there, or download the spec's own weights "
                f"with 'featstore models --download {spec.name}'")
        return path
    if not spec.weights_file:
        return _download_timm(spec, given)
    if not spec.url:
        raise WeightsNotFoundError(f"backbone {given}: no download URL; {spec.manual_download}")
    folder = folder or weights_dirs()[0]
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / spec.weights_file
    try:
        _fetch(spec.url, dest)
    except Exception as e:  # URLError, http.client's IncompleteRead, a short body
        raise WeightsNotFoundError(
            f"backbone {given}: downloading {spec.url} failed: {_why(e)} (or fetch it "
            f"elsewhere and put {spec.weights_file} in {folder})") from e
    return dest


def _download_timm(spec: BackboneSpec, given: str) -> Path:
    """A timm tag's pretrained weights into the Hugging Face cache, by timm."""
    import timm

    _reach_hub(spec, given)
    try:
        timm.create_model(spec.architecture, pretrained=True)
    except Exception as e:  # the hub's errors, its HTTP client's, timm's "no weights"
        raise WeightsNotFoundError(
            f"backbone {given}: downloading {spec.architecture}'s pretrained weights "
            f"(timm, Hugging Face hub) failed: {_why(e)}") from e
    found = find_weights(spec)
    if found is None:
        raise WeightsNotFoundError(f"timm downloaded {spec.architecture} but featstore "
                                   "cannot find the file in the caches it searches")
    return found


def _reach_hub(spec: BackboneSpec, given: str, timeout: float = 10.0) -> None:
    """One request for the spec's file on the Hugging Face hub, without retries: an offline
    machine fails here at once (the hub's own download retries each file for a minute).
    Any answer of the hub's (a file it does not have included) lets timm go on."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    cfg = _timm_cfg(spec.architecture)
    if cfg is None or not cfg.hf_hub_id:  # timm's own URL: one attempt by torch.hub
        return
    repo, _, revision = cfg.hf_hub_id.partition("@")
    try:
        get_hf_file_metadata(hf_hub_url(repo, HF_FILES[0], revision=revision or None),
                             timeout=timeout)
    except HfHubHTTPError:
        return
    except Exception as e:  # the HTTP client's errors (no route, refused, timed out), offline
        raise WeightsNotFoundError(
            f"backbone {given}: cannot reach the Hugging Face hub ({constants.ENDPOINT}) to "
            f"download {spec.architecture}'s pretrained weights: {_why(e)}; on a machine "
            f"without network, put them in {where_to_put(spec)} or pass "
            f"{spec.name}@/path/to/file") from e


def _fetch(url: str, dest: Path, timeout: float = 60.0) -> None:
    """``url`` to ``dest`` whole or not at all, with a progress bar on stderr."""
    import shutil
    import urllib.request

    from rich.console import Console
    from rich.progress import wrap_file

    part = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            size = response.headers.get("Content-Length")
            total = int(size) if size and size.isdigit() else None
            with (wrap_file(response, total=total or 0, description=dest.name,
                            console=Console(stderr=True), disable=total is None) as src,
                  open(part, "wb") as out):
                shutil.copyfileobj(src, out, 1 << 20)
        got = part.stat().st_size
        if total is not None and got != total:
            raise OSError(f"the connection ended after {got} of {total} bytes")
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def _why(e: BaseException) -> str:
    """An exception's type and first line (a hub error runs to a paragraph)."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:300]}" if first else type(e).__name__
