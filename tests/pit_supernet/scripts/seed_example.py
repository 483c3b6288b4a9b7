"""The docs/behaviour.md §7 seed example as a user writes it, with a short search on random data."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from plinio.methods import PITSuperNet
from plinio.methods.pit_supernet import PITSuperNetModule


class SimpleSuperNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = PITSuperNetModule([
            nn.Conv2d(32, 32, 3, padding='same'),
            nn.Sequential(nn.Conv2d(32, 32, 3, padding='same'), nn.Conv2d(32, 32, 3, padding='same')),
            nn.Conv2d(32, 32, 5, padding='same'),
            nn.Identity()])

    def forward(self, x):
        return self.conv(x)


torch.manual_seed(0)
pitsn_net = PITSuperNet(SimpleSuperNet(), input_shape=(32, 64, 64), regularizer='macs')
print("initial macs", int(pitsn_net.get_macs().item()))
net_opt = torch.optim.Adam(pitsn_net.net_parameters(), lr=1e-3)
nas_opt = torch.optim.Adam(pitsn_net.nas_parameters(), lr=0.1)
strength = 1e-6
x = torch.randn(1, 32, 64, 64)
target = torch.randn(1, 32, 64, 64)
for step in range(3):
    net_opt.zero_grad()
    nas_opt.zero_grad()
    task_loss = F.mse_loss(pitsn_net(x), target)
    loss = task_loss + strength * pitsn_net.get_regularization_loss()
    loss.backward()
    net_opt.step()
    nas_opt.step()
    print(f"step {step} loss {loss.item():.4f}")
print("final macs", int(pitsn_net.get_macs().item()))
print("summary", pitsn_net.arch_summary())
exported_model = pitsn_net.arch_export()
print("exported output", tuple(exported_model(x).shape))
