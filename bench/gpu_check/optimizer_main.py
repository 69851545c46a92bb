"""A main.py stand-in whose rounds do work shaped like BimanGrasp's optimizer, for
measuring packing on a real card (``packing_gpu.py``). Same command line, output and
result files as the emulator (docs/main-py.md); only the optimisation loop is real torch:

- two hands of 22 joints each, forward kinematics as chains of small batched 4x4 matrix
  products (one per joint, finger by finger, Python in between: many small kernels, as
  BimanGrasp's HandModel makes);
- each link's surface points moved by its transform; distances from the hands' contact
  points to the object's sampled surface, a signed penetration term against its normals,
  self-penetration between the two hands' keypoints, joint limits;
- the energy's backward, then a Langevin-style step (gradient step with noise, the
  proposal's energy, Metropolis acceptance at a temperature), as BimanGrasp's annealing
  optimizer does, every iteration;
- tqdm-like progress on stderr like main.py's (``optimizing: 42%|...| 420/1000 [...]``).

GPU_CHECK_DEVICE=cpu runs it without a GPU (a dry run of the plumbing). Sizes:
GPU_CHECK_OBJECT_POINTS (2048), GPU_CHECK_LINK_POINTS (32).
"""

from __future__ import annotations

import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from supervisor.emulator import program as emulator  # noqa: E402

FINGERS = (5, 4, 4, 4, 5)  # joints per finger (thumb, index, middle, ring, little): 22
KEYPOINTS = 32  # a hand's self-penetration keypoints
CONTACTS = 140  # a hand's contact candidates (main.py prints the same figure)


def _joint(torch, q, axis: int):
    """Batched 4x4 transforms of revolute joints with angles ``q`` (B,) about ``axis``."""
    c, s = torch.cos(q), torch.sin(q)
    one, zero = torch.ones_like(q), torch.zeros_like(q)
    rows = {0: [[one, zero, zero], [zero, c, -s], [zero, s, c]],
            1: [[c, zero, s], [zero, one, zero], [-s, zero, c]],
            2: [[c, -s, zero], [s, c, zero], [zero, zero, one]]}[axis]
    rot = torch.stack([torch.stack(r, -1) for r in rows], -2)
    t = torch.zeros(q.shape[0], 3, 1, device=q.device)
    t[:, 1] = 0.03  # each link 3 cm along the finger
    top = torch.cat([rot, t], -1)
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], device=q.device).expand(q.shape[0], 1, 4)
    return torch.cat([top, bottom], -2)


class Hands:
    def __init__(self, torch, batch: int, device: str, link_points: int,
                 object_points: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.torch, self.batch = torch, batch
        self.links = torch.randn(2, 22, link_points, 3, generator=g).mul(0.01).to(device)
        self.obj = torch.randn(object_points, 3, generator=g)
        self.obj = (self.obj / self.obj.norm(dim=1, keepdim=True) * 0.05).to(device)
        self.normals = self.obj / self.obj.norm(dim=1, keepdim=True)
        self.lower, self.upper = -0.3, 1.6
        self.contact = torch.randint(0, 22 * link_points, (2, CONTACTS), generator=g).to(device)
        self.keys = torch.randint(0, 22 * link_points, (2, KEYPOINTS), generator=g).to(device)

    def points(self, pose):
        """Forward kinematics of both hands: (B, 2, 22 * link_points, 3)."""
        torch, out = self.torch, []
        for h in range(2):
            wrist = pose[:, h, :3]
            q = pose[:, h, 9:]
            base = torch.eye(4, device=pose.device).expand(self.batch, 4, 4).clone()
            base[:, :3, 3] = wrist
            link, j = [], 0
            for joints in FINGERS:
                frame = base
                for n in range(joints):
                    frame = frame @ _joint(torch, q[:, j], (n + j) % 3)
                    pts = self.links[h, j]  # (P, 3)
                    link.append(pts @ frame[:, :3, :3].transpose(1, 2) + frame[:, None, :3, 3])
                    j += 1
            out.append(torch.cat(link, 1))
        return torch.stack(out, 1)

    def energy(self, pose):
        torch = self.torch
        pts = self.points(pose)  # (B, 2, N, 3)
        b = self.batch
        contact = torch.stack([pts[:, h, self.contact[h]] for h in range(2)], 1).reshape(b, -1, 3)
        d = torch.cdist(contact, self.obj.expand(b, -1, -1))  # (B, 280, M)
        dis, nearest = d.min(-1)
        signed = ((contact - self.obj[nearest]) * self.normals[nearest]).sum(-1)
        pen = torch.relu(-signed).sum(-1)
        keys = torch.stack([pts[:, h, self.keys[h]] for h in range(2)], 1)
        between = torch.cdist(keys[:, 0], keys[:, 1])
        spen = torch.relu(0.02 - between).sum((-1, -2))
        q = pose[:, :, 9:]
        joints = (torch.relu(q - self.upper) + torch.relu(self.lower - q)).sum((-1, -2))
        return 100.0 * dis.sum(-1) + 125.0 * pen + 10.0 * spen + joints


def torch_optimize(args, modes, results, iter_s, card) -> None:
    """The emulator's loop, made of real work (``iter_s``, ``card``: unused here)."""
    import torch

    device = os.environ.get("GPU_CHECK_DEVICE", "cuda")
    torch.manual_seed(args.seed)
    hands = Hands(torch, args.batch_size, device,
                  int(os.environ.get("GPU_CHECK_LINK_POINTS", "32")),
                  int(os.environ.get("GPU_CHECK_OBJECT_POINTS", "2048")))
    pose = torch.zeros(args.batch_size, 2, 9 + 22, device=device)
    pose[:, :, :3] = torch.randn(args.batch_size, 2, 3, device=device) * 0.1
    temperature, step, noise = 18.0, 5e-3, 0.1
    total, t0, last = args.num_iterations, time.monotonic(), -1.0
    sys.stderr.write(emulator._bar(0, total, 0.0))
    for i in range(1, total + 1):
        pose.requires_grad_(True)
        e = hands.energy(pose)
        (grad,) = torch.autograd.grad(e.sum(), pose)
        with torch.no_grad():
            t = temperature * 0.95 ** (i / 50)
            proposal = pose - step * grad + noise * math.sqrt(step) * torch.randn_like(pose)
            e2 = hands.energy(proposal)
            accept = torch.rand_like(e2) < torch.exp((e - e2).clamp(max=0) / t)
            pose = torch.where(accept[:, None, None], proposal, pose).detach()
        now = time.monotonic()
        if now - last >= 0.1 or i == total:
            if device != "cpu":
                torch.cuda.synchronize()
            sys.stderr.write(emulator._bar(i, total, now - t0))
            sys.stderr.flush()
            last = now
    sys.stderr.write(emulator._bar(total, total, time.monotonic() - t0) + "\n")
    sys.stderr.flush()


def main() -> None:
    os.environ.setdefault("EMULATOR_STARTUP_S", "0")
    args = emulator.build_parser().parse_args(sys.argv[1:])
    if args.gpu != "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)  # what main.py does
    import torch  # noqa: F401  (start-up as a real round pays it: torch and CUDA)

    if os.environ.get("GPU_CHECK_DEVICE", "cuda") != "cpu":
        torch.cuda.init()
    emulator._optimize = torch_optimize
    emulator.run(args, "fork")


if __name__ == "__main__":
    main()
