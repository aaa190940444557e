"""`mesh vmodels`: set, delete, inspect and list vmodels (aliases that move to a new model without a gap: the active
model serves until the target has loaded)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mesh import bulk, status
from mesh.cli.common import UsageError, channel, client_arguments, status_text, stub
from mesh.gen import mesh_admin_pb2 as admin
from mesh.gen import mesh_admin_pb2_grpc as admin_grpc
from mesh.gen import model_mesh_pb2 as mm


def vmodel_text(info: mm.VModelStatusInfo) -> str:
    """STATE -> active (its status), and the target while the vmodel is moving to it."""
    state = status.VMODEL_STATE_NAMES[info.status]
    if not info.activeModelId:
        return state
    text = f"{state} -> {info.activeModelId} ({status_text(info.activeModelStatus)})"
    if info.targetModelId and info.targetModelId != info.activeModelId:
        text += f", moving to {info.targetModelId} ({status_text(info.targetModelStatus)})"
        if info.meshTargetCopiesWanted:
            loaded = sum(c.copyStatus == mm.ModelStatusInfo.LOADED for c in info.targetModelStatus.modelCopyInfos)
            text += f", {loaded} of {info.meshTargetCopiesWanted} copies loaded"
    return text


def _set(args: argparse.Namespace) -> int:
    request = mm.SetVModelRequest(
        vModelId=args.vmodel_id,
        targetModelId=args.model_id,
        updateOnly=args.update_only,
        autoDeleteTargetModel=args.auto_delete,
        loadNow=args.load_now,
        force=args.force,
        sync=args.sync,
        expectedTargetModelId=args.expected_target,
        owner=args.owner,
    )
    if args.type:  # register the target model with the vmodel
        path = bulk.resolve_path(args.path, Path.cwd())
        request.modelInfo.CopyFrom(mm.ModelInfo(type=args.type, path=path, key=args.key))
        request.meshRequiredLabels.extend(args.label)
    elif args.path or args.key or args.label:
        raise UsageError("--path, --key and --label describe a model to register with the vmodel: give --type too")
    print(f"{args.vmodel_id}: {vmodel_text(stub(args).setVModel(request, timeout=args.timeout))}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    request = mm.DeleteVModelRequest(vModelId=args.vmodel_id, owner=args.owner)
    stub(args).deleteVModel(request, timeout=args.timeout)
    print(f"{args.vmodel_id}: deleted")
    return 0


def _status(args: argparse.Namespace) -> int:
    request = mm.GetVModelStatusRequest(vModelId=args.vmodel_id, owner=args.owner)
    reply = stub(args).getVModelStatus(request, timeout=args.timeout)
    print(f"{args.vmodel_id}: {vmodel_text(reply)}")
    return 0 if reply.status != mm.VModelStatusInfo.NOT_FOUND else 1


def _list(args: argparse.Namespace) -> int:
    listing = admin_grpc.MeshAdminStub(channel(args)).ListModels(admin.ListModelsRequest(), timeout=args.timeout)
    if args.json:
        print(json.dumps({"vmodels": [status.vmodel_row(v) for v in listing.vmodels]}, indent=2))
        return 0
    print(f"{'VMODEL':<28} STATUS")
    for v in listing.vmodels:
        print(f"{v.vModelId:<28} {vmodel_text(v.status)}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    vmodels = sub.add_parser("vmodels", help="set, delete, inspect and list vmodels")
    vsub = vmodels.add_subparsers(dest="vmodels_command", required=True)

    def owned(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("vmodel_id")
        p.add_argument("--owner", default="", help="the vmodel's owner, when it has one")
        return client_arguments(p)

    set_ = owned(vsub.add_parser("set", help="point a vmodel at a model (the old one serves until it has loaded)"))
    set_.add_argument("model_id", help="the target model")
    set_.add_argument("--type", default="", help="register the target with the vmodel: its model type")
    set_.add_argument("--path", default="", help="with --type: the model file or directory")
    set_.add_argument("--key", default="", help="with --type: opaque key passed to the runtime")
    set_.add_argument("--label", action="append", default=[], help="with --type: a label the target requires")
    set_.add_argument("--auto-delete", action="store_true", help="delete the target model with the vmodel")
    set_.add_argument("--update-only", action="store_true", help="only retarget an existing vmodel")
    set_.add_argument("--force", action="store_true", help="switch at once, without waiting for the target to load")
    set_.add_argument("--expected-target", default="", help="refuse unless the current target is this one")
    set_.add_argument("--load-now", action="store_true")
    set_.add_argument("--sync", action="store_true", help="wait for the target to load")
    set_.set_defaults(func=_set)
    delete = owned(vsub.add_parser("delete", help="delete a vmodel (and its models, when set with --auto-delete)"))
    delete.set_defaults(func=_delete)
    status_ = owned(vsub.add_parser("status", help="one vmodel's state, active and target models"))
    status_.set_defaults(func=_status)
    listed = client_arguments(vsub.add_parser("list", help="every vmodel with its state"))
    listed.add_argument("--json", action="store_true")
    listed.set_defaults(func=_list)
