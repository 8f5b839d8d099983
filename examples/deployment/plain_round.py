"""Stand-in for *your* FL client: one local round in plain PyTorch (no gradleak code), saving what an audit needs.

    python plain_round.py          # writes before.pt, after.pt, client_images/, PROTOCOL.yaml here

The client: 4 private 32x32 grey images (borrowed from gradleak's built-in digits, as stand-in data), torch.optim.SGD (lr 0.05, momentum 0.9, weight decay 5e-4), a DataLoader
shuffled with seed 0, mini-batches of 2, 1 epoch, inputs normalized per channel inside the client.
"""
import os

import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from mynet import make

torch.manual_seed(0)
model = make(num_classes=10, in_channels=1, resolution=32)
torch.save(model.state_dict(), "before.pt")  # what the server sent

# the client's private images, saved as 8-bit PNG files (gradleak reads them back exactly)
from gradleak.data import load_dataset, sample_batch  # only to borrow stand-in images

x, y = sample_batch(load_dataset("digits", split="private", resolution=32, channels=1), 4, seed=0)
x = (x * 255).round() / 255
os.makedirs("client_images", exist_ok=True)
for i in range(len(x)):
    Image.fromarray((x[i, 0] * 255).round().to(torch.uint8).numpy()).save(f"client_images/{i:02d}.png")

mean, std = torch.tensor([0.5])[:, None, None], torch.tensor([0.25])[:, None, None]
loader = DataLoader(TensorDataset(x, y), batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(0))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
model.train()
for xb, yb in loader:
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model((xb - mean) / std), yb).backward()
    opt.step()
torch.save(model.state_dict(), "after.pt")  # what came back

with open("PROTOCOL.yaml", "w") as f:
    f.write("""model: {num_classes: 10, channels: 1, resolution: 32}
num_images: 4
client:
  protocol: fedavg
  lr: 0.05
  local_batch_size: 2
  epochs: 1
  momentum: 0.9
  weight_decay: 5.0e-4
  order: shuffled
  seed: 0
  mean: [0.5]
  std: [0.25]
""")
print(f"wrote before.pt, after.pt, client_images/ ({len(x)} PNG), PROTOCOL.yaml; labels {','.join(map(str, y.tolist()))}")
