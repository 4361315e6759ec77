import torch, sys
sys.path.insert(0, "tests")
from torch import nn
from agd_envs.sampling import sample, imagine, Conditioning
from agd_envs.world_model import WorldModel, WorldModelConfig
dev = torch.device("cuda")
m = WorldModel(WorldModelConfig.preset("cpu", "Hopper")).to(dev)
actor = nn.Linear(11, 3).to(dev); critic = nn.Linear(11, 1).to(dev)
cpu_critic = nn.Linear(11, 1)  # critic on another device: call_net moves tensors
s0 = torch.randn(64, 11, device=dev)
for mode in ("x0", "dps"):
    a = imagine(m, s0, actor, critic, guide="sag", guide_mode=mode, generator=torch.Generator(dev).manual_seed(0))
    b = imagine(m, s0, actor, critic, guide="sag", guide_mode=mode, generator=torch.Generator(dev).manual_seed(0))
    c = imagine(m, s0, actor, cpu_critic, guide="eag", guide_mode=mode, eta=1.0, generator=torch.Generator(dev).manual_seed(0))
    print(mode, a.states.device, a.advantages.device, c.advantages.device, "finite", bool(torch.isfinite(a.states).all()),
          "repeatable", torch.equal(a.states, b.states), "s0 exact", torch.equal(a.states[:, 0], s0))
