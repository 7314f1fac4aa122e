"""Training that keeps the epoch with the least held-out loss and stops once it stops falling."""

import math


def train_keeping_best(run_epoch, held_out_loss, variables, epochs, patience, log=None):
    """Runs up to `epochs` epochs and restores `variables` to their values after the epoch whose held-out loss
    was least.

    Args:
        run_epoch: () -> the epoch's training loss (a float, or None when not tracked); one pass of training.
        held_out_loss: () -> the held-out loss after it (lower is better; NaN never counts as better).
        variables: the variables to keep and restore (anything with `numpy()` and `assign`).
        epochs: at most this many epochs.
        patience: stop once this many epochs in a row have not lowered the least held-out loss.
        log: optional callable given one line per epoch.

    Returns:
        {"loss": training losses, "val_loss": held-out losses, one per epoch run, "best_epoch": the epoch kept
        (1-based), or 0 when no held-out loss was finite (the variables are then left as the last epoch made
        them)}.
    """
    history, best, kept = {"loss": [], "val_loss": [], "best_epoch": 0}, math.inf, None
    for epoch in range(1, epochs + 1):
        history["loss"].append(run_epoch())
        history["val_loss"].append(float(held_out_loss()))
        if history["val_loss"][-1] < best:
            best, kept, history["best_epoch"] = history["val_loss"][-1], [v.numpy() for v in variables], epoch
        if log:
            trained = "" if history["loss"][-1] is None else f"loss {history['loss'][-1]:.4f}, "
            log(f"epoch {epoch}: {trained}held-out {history['val_loss'][-1]:.4f}")
        if epoch - history["best_epoch"] >= patience:
            break
    if kept is not None:
        for variable, value in zip(variables, kept):
            variable.assign(value)
    return history
