"""One training process serves its own rendezvous; a launcher's is kept."""

import socket

from fusepipe.train.loop import setup_distributed


def test_a_lone_process_ignores_an_inherited_port(monkeypatch):
    """The variables a shell inside a torchrun (or an earlier in-process run) leaves behind: the port is taken, as
    by a train job beside this one; the process picks a free one of its own."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "10.0.0.9",
                            "MASTER_PORT": port}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
        assert setup_distributed() == (0, 1)
        import os

        assert os.environ["MASTER_PORT"] != port and os.environ["MASTER_ADDR"] == "127.0.0.1"
        with socket.socket() as mine:
            mine.bind(("127.0.0.1", int(os.environ["MASTER_PORT"])))


def test_a_launchers_rendezvous_is_kept(monkeypatch):
    import os

    for env in ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.9", "MASTER_PORT": "29500"},
                {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "10.0.0.9", "MASTER_PORT": "29500",
                 "TORCHELASTIC_RUN_ID": "job"}):
        monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert setup_distributed() == (int(env["RANK"]), int(env["WORLD_SIZE"]))
        assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("10.0.0.9", "29500")
