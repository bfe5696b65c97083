"""``load_diffusers``: a saved diffusers pipeline or model folder as a pydiffgen denoiser.

Everything is read from the folder (``local_files_only``: nothing is downloaded) and
from safetensors only; each part is checked before it is read, so a folder pydiffgen
cannot read exactly fails in one line naming the part.
"""

from __future__ import annotations

from ...errors import CheckpointError, ConfigError
from .denoiser import DiffusersDenoiser
from .latent import LatentCodec
from .layout import Layout, check_safetensors, find_layout, import_diffusers, quiet, read_config
from .networks import check_network
from .schedulers import schedule_of
from .text import PromptEncoder

LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, NotImplementedError)


def load_diffusers(path, *, device=None, dtype=None,
                   clip_sample: bool | None = None) -> DiffusersDenoiser:
    """The denoiser of the diffusers folder ``path`` (pipeline or model folder), on
    ``device`` (None: the CPU) with weights in ``dtype`` (None: each library's default).

    The network (``unet/`` or ``transformer/``) with its scheduler's σ map; a ``vae/``
    (``AutoencoderKL``) makes it latent; ``text_encoder/`` + ``tokenizer/`` (CLIP) let it
    embed prompts. ``clip_sample``: None clamps D where the scheduler config clips.
    Raises CheckpointError for an unreadable or unsupported folder: pickle weights, a
    network or scheduler config that cannot be mapped exactly to σ (naming its class).
    """
    diffusers = import_diffusers()
    layout = find_layout(path)
    kind = read_config(layout.network / "config.json").get("_class_name")
    check_network(kind, layout.network)
    with quiet(diffusers):
        scheduler = _scheduler(diffusers, layout)
        try:
            schedule = schedule_of(scheduler, clip_sample=clip_sample)
        except ConfigError as err:
            raise CheckpointError(f"{layout.scheduler}: {err}") from None
        net = _from_pretrained(getattr(diffusers, kind), layout.network, torch_dtype=dtype,
                               low_cpu_mem_usage=False)
        codec = _codec(diffusers, layout.vae, dtype) if layout.vae else None
        prompts = _prompts(layout, dtype) if layout.text_encoder else None
    model = DiffusersDenoiser(net, schedule, scheduler=scheduler, codec=codec,
                              prompts=prompts, source=str(layout.root))
    return model.eval().to(device or "cpu")


def _scheduler(diffusers, layout: Layout):
    """The diffusers scheduler its config names (CheckpointError when it names none here)."""
    if not layout.scheduler.is_file():
        raise CheckpointError(f"{layout.root}: no scheduler config at {layout.scheduler}; "
                              "the noise schedule is not guessed")
    cfg = read_config(layout.scheduler)
    kind = cfg.get("_class_name")
    cls = getattr(diffusers, kind, None) if isinstance(kind, str) else None
    if cls is None or not kind.endswith("Scheduler"):
        raise CheckpointError(f"{layout.scheduler}: scheduler {kind or '(no _class_name)'} "
                              "cannot be mapped exactly to noise levels σ")
    try:
        return cls.from_config(cfg)
    except LOAD_ERRORS as err:
        raise CheckpointError(f"{layout.scheduler}: scheduler {kind}: {err}") from None


def _from_pretrained(cls, folder, **kwargs):
    """``cls.from_pretrained(folder)`` from safetensors, offline; CheckpointError if not."""
    check_safetensors(folder)
    try:
        return cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                   **kwargs)
    except LOAD_ERRORS as err:
        raise CheckpointError(f"{folder}: cannot load the {cls.__name__} "
                              f"({type(err).__name__}: {err})") from None


def _codec(diffusers, folder, dtype) -> LatentCodec:
    kind = read_config(folder / "config.json").get("_class_name")
    if kind != "AutoencoderKL":
        raise CheckpointError(f"{folder}: autoencoder {kind} is not supported (AutoencoderKL is)")
    return LatentCodec(_from_pretrained(diffusers.AutoencoderKL, folder, torch_dtype=dtype,
                                        low_cpu_mem_usage=False))


def _prompts(layout: Layout, dtype) -> PromptEncoder:
    """The CLIP text encoder and tokenizer of a pipeline (transformers, offline)."""
    try:
        import transformers
    except ImportError:
        raise ConfigError("text-conditional pipelines need transformers: "
                          "pip install transformers") from None
    kinds = read_config(layout.text_encoder / "config.json").get("architectures") or []
    if kinds != ["CLIPTextModel"]:
        raise CheckpointError(f"{layout.text_encoder}: text encoder {kinds} is not supported "
                              "(CLIPTextModel is)")
    if layout.tokenizer is None:
        raise CheckpointError(f"{layout.root}: a text encoder without its tokenizer/")
    encoder = _from_pretrained(transformers.CLIPTextModel, layout.text_encoder, dtype=dtype)
    try:
        tokenizer = transformers.CLIPTokenizer.from_pretrained(str(layout.tokenizer),
                                                               local_files_only=True)
    except LOAD_ERRORS as err:
        raise CheckpointError(f"{layout.tokenizer}: cannot load the CLIP tokenizer "
                              f"({type(err).__name__}: {err})") from None
    return PromptEncoder(tokenizer, encoder.eval())
