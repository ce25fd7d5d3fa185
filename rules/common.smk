# Helpers the rules share: the configuration, the remote listing, the target list.
# Everything here runs when the Snakefile is parsed, so `snakemake -n` and
# `snakemake --dag` show the real pending jobs; it must stay cheap (see README,
# "Speed") and must never print to stdout (that would corrupt --dag output).

import sys
from pathlib import Path

from snakemake.logging import logger

from scripts.configuration import (
    ConfigurationError,
    check_configuration,
    get_now,
    get_streams,
)
from scripts.markers import marker_path
from scripts.remote import RemoteError, first_night, list_exposures
from scripts.targets import pending_exposures, scan_night

try:
    check_configuration(config)
except ConfigurationError as err:
    sys.exit(f"desitransfer: {', '.join(map(str, workflow.configfiles))}: {err}")

STATE = config["state"]
STREAMS = get_streams(config)
NOW = get_now(config)
FIRST_NIGHT = first_night(NOW, config["lookback_nights"])
# `snakemake --lint` parses the workflow to read its rules and runs nothing:
# it must not need the mountain.
LINTING = "--lint" in sys.argv


wildcard_constraints:
    stream="[A-Za-z][A-Za-z0-9_]*",
    night="[0-9]{8}",
    expid="[0-9]{8}",


def get_marker(stage):
    """The marker path pattern of an exposure-level `stage`."""
    return str(marker_path(STATE, "{stream}", "{night}", "{expid}", stage))


def get_log(stage):
    """The log file pattern of an exposure-level `stage`, parallel to its marker."""
    return (
        str(marker_path(f"{STATE}/logs", "{stream}", "{night}", "{expid}", stage))
        + ".log"
    )


def get_listing(stream):
    """The mountain's listing for `stream`, cached for remote.listing_cache seconds."""
    try:
        return list_exposures(
            config["remote"],
            stream.source,
            FIRST_NIGHT,
            cache_file=Path(STATE, ".listing", f"{stream.name}.json"),
            cache_seconds=config["remote"]["listing_cache"],
        )
    except RemoteError as err:
        sys.exit(f"desitransfer: stream {stream.name}: {err}")


def get_listings():
    """Every stream's listing; malformed links are reported and skipped."""
    listings = {}
    if LINTING:
        return listings
    for name, stream in STREAMS.items():
        listing = get_listing(stream)
        for link in listing.malformed:
            logger.warning(
                f"Malformed symlink detected: {link} (stream {name}); expected "
                "SOURCE/NIGHT/EXPID with 8-digit NIGHT and EXPID. Skipping."
            )
        if listing.locked:
            logger.info(
                f"Checksums are being computed at the mountain "
                f"({config['remote']['checksum_lock']} exists on "
                f"{config['remote']['host']}): no transfer is planned this run."
            )
            return {}
        listings[name] = listing
    return listings


LISTINGS = get_listings()


def get_exposure_targets():
    """Installed-markers of the listed exposures still pending, every stream."""
    targets = []
    for name, listing in LISTINGS.items():
        nights = {n: scan_night(STATE, name, n) for n in listing.nights()}
        for night, expid in pending_exposures(listing.exposures, nights):
            targets.append(str(marker_path(STATE, name, night, expid, "installed")))
    return targets
