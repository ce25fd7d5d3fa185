# Exposure-level stages: stage (rsync into staging), verify (SHA-256), install
# (read-only, renamed into the archive). Each writes its marker on success only.


rule report_listing_failure:
    # Never succeeds: it makes a run in which some stream could not be listed end in
    # failure while the other streams' jobs go on. Its output is never written.
    output:
        f"{STATE}/.listing/{{stream}}.unlisted",
    log:
        f"{STATE}/logs/{{stream}}.listing.log",
    conda:
        "../envs/desitransfer.yaml"
    params:
        reason=lambda wc: LISTING_ERRORS.get(wc.stream, "listing failed"),
    shell:
        "echo {params.reason:q} | tee {log} >&2; exit 1"


rule stage_exposure:
    output:
        get_marker("staged"),
    log:
        get_log("staged"),
    conda:
        "../envs/desitransfer.yaml"
    resources:
        transfers=1,
    params:
        published=get_published,
    script:
        "../scripts/stage.py"


rule verify_exposure:
    input:
        get_marker("staged"),
    output:
        get_marker("checksummed"),
    log:
        get_log("checksummed"),
    conda:
        "../envs/desitransfer.yaml"
    threads: config["verify"]["threads"]
    resources:
        transfers=1,
    script:
        "../scripts/verify.py"


rule install_exposure:
    input:
        get_marker("checksummed"),
    output:
        get_marker("installed"),
    log:
        get_log("installed"),
    conda:
        "../envs/desitransfer.yaml"
    script:
        "../scripts/install.py"
