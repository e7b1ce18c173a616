"""`lerpray generate`: one prompt through an anchor set at one mix, streamed to stdout.

    lerpray generate --anchors s3://bucket/sets/sentiment \\
        --mix '{"alpha": {"sentiment": 0.9}}' [--base MODEL] [--chat] [--temperature 0.7] [--top-p 0.9] \\
        [--top-k 0] [--max-tokens 128] [--seed 0] [--stop "\\n\\n"] [--allow-extrapolation] \\
        [--kv-cache-bytes 256MiB] [--context-length 2048] "Write a review:"
"""

from __future__ import annotations

import argparse
import json
import sys

from lerpray.kv_config import KVCacheArgs, add_kv_flags, kv_flags


def add_parsers(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate text from an anchor set at one mix (streamed)")
    parser.add_argument("prompt", help="the prompt (raw text; with --chat, the user message)")
    parser.add_argument("--anchors", required=True, metavar="URI", help="anchor set: s3://bucket/prefix or a folder")
    parser.add_argument("--mix", metavar="JSON", help='any `interpolation` the server takes, e.g. \'{"alpha": '
                        '{"sentiment": 0.8}}\', \'{"anchors": {"sentiment.positive": 1}}\', a target (with "feedback" '
                        'it runs closed loop) or a schedule (default: alpha 0.5 on every attribute)')
    parser.add_argument("--base", metavar="MODEL", help="base model folder or id (default: the one the set names)")
    parser.add_argument("--chat", action="store_true", help="send the prompt as a user message via the chat template")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, help="fix the sampling stream: same seed, same text")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    parser.add_argument("--allow-extrapolation", action="store_true",
                        help='allow mixes with "extrapolate": true within the default bounds (alpha in [-1, 2])')
    add_kv_flags(parser, "unset", fraction=False)
    parser.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    from lerpray.anchors import open_set
    from lerpray.anchors.calibration import load_calibration
    from lerpray.eval.steer import steerer
    from lerpray.mixing import ExtrapolationBounds, MixError
    from lerpray.model import Engine, GenerationRequest
    from lerpray.model.sampling import SamplingParams
    from lerpray.steering import MixContext, resolve

    try:
        mix = json.loads(args.mix) if args.mix is not None else None
    except json.JSONDecodeError as err:
        raise MixError("--mix", f"is not valid JSON ({err}); quote it, e.g. --mix '{{\"alpha\": {{...}}}}'") from err
    sampling = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, max_tokens=args.max_tokens,
        stop=tuple(args.stop), seed=args.seed,
    )
    kv = KVCacheArgs.model_validate(kv_flags(args))  # a bad size fails here, naming the forms it takes
    kv.check_kv_device(False, "the CPU", ("--max-tokens", args.max_tokens))
    engine = Engine.from_uri(args.anchors, base_model=args.base, max_batch_size=1, **kv.kv_engine_kwargs())
    bounds = ExtrapolationBounds() if args.allow_extrapolation else None
    context = MixContext(engine.layout, bounds, *load_calibration(open_set(args.anchors)))
    resolved = resolve(context, interpolation=mix, max_tokens=args.max_tokens)  # the server's one way in
    prompt = {"messages": [{"role": "user", "content": args.prompt}]} if args.chat else {"prompt": args.prompt}
    # a target with feedback runs closed loop: the hook the server builds (lerpray.eval.steer)
    steer = None if resolved.feedback is None else steerer(resolved.feedback, engine.layout)
    request = GenerationRequest(mix=resolved, sampling=sampling, steer=steer, **prompt)
    for event in engine.stream([request]):
        sys.stdout.write(event.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if steer is not None:  # the mixes the reply used and its final score, as a served choice reports them
        sys.stderr.write(f"resolved_mix.feedback: {json.dumps(steer.report(0))}\n")
    return 0
