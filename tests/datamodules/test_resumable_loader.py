"""The training loaders' position (`datamodules/resumable_loader.py`): each epoch's order is a function of the seed
and the epoch, the position after k batches is (epoch, k), and a loader given that position yields exactly the
rest of that epoch. End to end through Lightning: tests/test_mid_epoch_resume.py."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.data import _update_dataloader
from torch.utils.data import IterableDataset, SequentialSampler

from datamodules import CIFAR10DataModule, WikiText2DataModule
from datamodules.resumable_loader import ResumableDataLoader
from tests.datamodules.test_wikitext2 import write_corpus


def fake_trainer(rank: int = 0, world_size: int = 1, epoch: int = 0, fn: TrainerFn = TrainerFn.FITTING):
    """What the datamodules read from a trainer: rank, world size, current epoch, the live training loader, stage."""
    return SimpleNamespace(global_rank=rank, world_size=world_size, current_epoch=epoch, train_dataloader=None,
                           state=SimpleNamespace(fn=fn))


def cifar(cifar_dir, **trainer) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(data_dir=str(cifar_dir), batch_size=16)
    dm.setup("fit")
    dm.trainer = fake_trainer(**trainer)
    return dm


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def wikitext(corpus, epoch: int = 0) -> WikiText2DataModule:
    dm = WikiText2DataModule(str(corpus), batch_size=4, bptt=10)
    dm.setup("fit")
    dm.trainer = fake_trainer(epoch=epoch)
    return dm


def epoch_of(loader: ResumableDataLoader, epoch: int) -> ResumableDataLoader:
    """Set the epoch as Lightning does before each epoch (the sampler's set_epoch; WikiText reads the trainer)."""
    if isinstance(loader.dataset, IterableDataset):
        loader.dataset.epoch_fn = lambda: epoch
    else:
        loader.sampler.set_epoch(epoch)
    return loader


def targets(batches) -> list[torch.Tensor]:
    return [batch[1] for batch in batches]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(map(torch.equal, a, b))


def test_cifar_epoch_order_depends_on_the_seed_and_epoch_only(cifar_dir, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")
    order = {epoch: targets(epoch_of(cifar(cifar_dir).train_dataloader(), epoch)) for epoch in (0, 1)}
    again = targets(epoch_of(cifar(cifar_dir).train_dataloader(), 1))  # another loader, another datamodule
    assert same(again, order[1]) and not same(order[0], order[1])
    assert sorted(torch.cat(order[1]).tolist()) == sorted(cifar(cifar_dir).train_set.labels.tolist())  # all, once
    monkeypatch.setenv("PL_GLOBAL_SEED", "1")  # seed_everything's seed sets the order, as Lightning's DDP sampler
    assert not same(targets(epoch_of(cifar(cifar_dir).train_dataloader(), 1)), order[1])


@pytest.mark.parametrize("task", ["cifar", "wikitext"])
def test_a_restored_position_yields_the_rest_of_that_epoch(task, cifar_dir, corpus):
    make = (lambda: cifar(cifar_dir).train_dataloader()) if task == "cifar" else \
        (lambda: wikitext(corpus).train_dataloader())
    whole = list(epoch_of(make(), 2))
    loader = epoch_of(make(), 2)
    batches = iter(loader)
    done = [next(batches) for _ in range(3)]
    assert loader.state_dict() == {"epoch": 2, "batches_done": 3}

    resumed = epoch_of(make(), 2)
    resumed.load_state_dict(loader.state_dict())
    assert resumed.state_dict() == {"epoch": 2, "batches_done": 3}  # restored, not iterated yet
    rest = list(resumed)
    assert len(rest) == len(whole) - 3 and resumed.state_dict() == {"epoch": 2, "batches_done": len(whole)}
    for got, expected in zip(done + rest, whole):  # inputs and targets: the same rows at the same stream offsets
        assert all(torch.equal(g, e) for g, e in zip(got, expected))
    assert len(list(resumed)) == len(whole)  # the position is used once: the next iteration is a whole epoch

    stale = epoch_of(make(), 3)
    stale.load_state_dict({"epoch": 2, "batches_done": 3})  # an epoch-end checkpoint of epoch 2, say
    assert len(list(stale)) == len(whole)


@pytest.mark.parametrize("task", ["cifar", "wikitext"])
def test_iterating_draws_nothing_from_the_global_generator(task, cifar_dir, corpus):
    """A resumed run makes an iterator the uninterrupted run did not: it must not shift the global random stream.
    CIFAR's evaluation loaders too: with persistent workers their iterator is made once, at the sanity check
    (whose draws are undone) or, resumed mid-epoch (no sanity check), at the first validation."""
    dm = cifar(cifar_dir) if task == "cifar" else wikitext(corpus)
    loaders = [dm.train_dataloader(), *([dm.val_dataloader(), dm.test_dataloader()] if task == "cifar" else [])]
    before = torch.get_rng_state()
    for loader in loaders:
        list(loader)
    assert torch.equal(torch.get_rng_state(), before)


def test_the_datamodule_carries_the_position_to_the_loader_it_builds_next(cifar_dir, corpus):
    """Lightning restores the datamodule before it builds the loaders; the position waits for the next one."""
    for dm in (cifar(cifar_dir), wikitext(corpus)):
        assert "train_position" not in dm.state_dict()  # nothing built yet, nothing restored
        saved = {**dm.state_dict(), "train_position": {"epoch": 0, "batches_done": 2}}
        dm.load_state_dict(saved)
        loader = dm.train_dataloader()
        assert loader.state_dict() == {"epoch": 0, "batches_done": 2}
        assert dm.train_dataloader().state_dict() == {"epoch": 0, "batches_done": 0}  # handed over once
        dm.trainer.train_dataloader = loader  # the live loader, as `trainer.train_dataloader` returns it
        next(iter(loader))
        assert dm.state_dict()["train_position"] == {"epoch": 0, "batches_done": 3}
        dm.load_state_dict(saved)  # restored after the loader was built (restore_checkpoint_after_setup)
        assert loader.state_dict() == {"epoch": 0, "batches_done": 2}

        dm.trainer = fake_trainer(fn=TrainerFn.VALIDATING)  # validate(ckpt_path=...): nothing to resume, ever
        dm.load_state_dict(saved)
        dm.trainer = fake_trainer()
        assert dm.train_dataloader().state_dict() == {"epoch": 0, "batches_done": 0}


def test_ddp_ranks_take_distinct_shards_and_resume_their_own(cifar_dir):
    """Under DDP the datamodule's sampler shards each epoch, so Lightning injects no sampler of its own."""
    loaders = [epoch_of(cifar(cifar_dir, rank=rank, world_size=2).train_dataloader(), 1) for rank in (0, 1)]
    seen = [torch.cat(targets(loader)).tolist() for loader in loaders]
    indices = [list(loader.sampler) for loader in loaders]
    assert len(indices[0]) == len(indices[1]) == 40 and not set(indices[0]) & set(indices[1])
    assert set(indices[0]) | set(indices[1]) == set(range(80))
    assert all(isinstance(loader.sampler, torch.utils.data.DistributedSampler) for loader in loaders)

    resumed = epoch_of(cifar(cifar_dir, rank=1, world_size=2).train_dataloader(), 1)
    resumed.load_state_dict({"epoch": 1, "batches_done": 1})
    assert torch.cat(targets(resumed)).tolist() == seen[1][16:]


def test_lightning_can_still_swap_the_sampler(cifar_dir):
    """`overfit_batches` re-creates the loader with a SequentialSampler: it stays a ResumableDataLoader."""
    loader = cifar(cifar_dir).train_dataloader()
    swapped = _update_dataloader(loader, SequentialSampler(loader.dataset), mode="fit")
    assert isinstance(swapped, ResumableDataLoader) and swapped.collate_fn is loader.collate_fn
    assert torch.equal(torch.cat(targets(swapped)), loader.dataset.labels)


def test_a_loader_without_a_length_is_refused():
    class Endless(IterableDataset):
        def __iter__(self):
            return iter(range(3))

    with pytest.raises(TypeError, match="needs a dataset or sampler with a length"):
        ResumableDataLoader(Endless(), batch_size=None)
