"""A driver process dying mid-fit, for the distributed tests (Dask and Spark)."""


class DriverLost(Exception):
    """Raised from a fit's callback, as if the driver process had died there."""


def dies_after(iteration: int):
    """A fit callback that raises DriverLost once ``iteration`` (0-based) has finished."""
    def callback(done, loss):
        if done == iteration:
            raise DriverLost
    return callback
