# Exposure-level stages: stage (rsync into staging), verify (SHA-256), install
# (read-only, renamed into the archive). Each writes its marker on success only.
# Each job is `python -m scripts.MODULE` with explicit arguments (get_job), not a
# `script:`: the job process never imports Snakemake. The job writes its own log
# (errors also to stderr, for the cron log): its output is not redirected.


rule report_listing_failure:
    # Never succeeds: it makes a run in which some stream could not be listed end in
    # failure while the other streams' jobs go on. Its output is never written.
    output:
        unlisted_target(STATE, "{stream}"),
    log:
        listing_log_path(STATE, "{stream}"),
    conda:
        "../envs/desitransfer.yaml"
    params:
        reason=lambda wc: PLAN.unlisted.get(wc.stream, "listing failed"),
    shell:
        "echo {params.reason:q} | tee {log} >&2; exit 1"


rule stage_exposure:
    output:
        get_marker("staged"),
    log:
        get_log("staged"),
    priority: get_priority(0)
    conda:
        "../envs/desitransfer.yaml"
    resources:
        transfers=1,
        runtime=get_runtime("stage"),
    params:
        job=get_job(
            "stage",
            "stage_exposure",
            needs=["streams", "remote", "verify"],
            extra=lambda wc: ["--published", get_published(wc) or ""],
        ),
    shell:
        "{params.job} --output {output:q} --log {log:q} --threads {threads}"


rule verify_exposure:
    input:
        get_marker("staged"),
    output:
        get_marker("checksummed"),
    log:
        get_log("checksummed"),
    priority: get_priority(1)
    conda:
        "../envs/desitransfer.yaml"
    threads: config["verify"]["threads"]
    resources:
        transfers=1,
        runtime=get_runtime("verify"),
    params:
        job=get_job("verify", "verify_exposure", needs=["streams", "remote", "verify"]),
    shell:
        "{params.job} --output {output:q} --log {log:q} --threads {threads}"


rule install_exposure:
    input:
        get_marker("checksummed"),
    output:
        get_marker("installed"),
    log:
        get_log("installed"),
    priority: get_priority(2)
    conda:
        "../envs/desitransfer.yaml"
    params:
        job=get_job("install", "install_exposure", needs=["streams"]),
    shell:
        "{params.job} --output {output:q} --log {log:q} --threads {threads}"
