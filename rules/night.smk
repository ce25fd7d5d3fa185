# Night-level stages: the morning catch-up of late files and the backup to tape.
# Both wait for every listed exposure of the night to be installed. Jobs run as in
# rules/exposure.smk (`python -m scripts.MODULE`, see get_job). Once a day, when
# backup.recall_per_day is set, a few members are recalled from tape and verified.


rule catch_up_night:
    input:
        get_night_inputs,
    output:
        get_night_marker("caughtup"),
    log:
        get_log("caughtup", night_level=True),
    conda:
        "../envs/desitransfer.yaml"
    threads: config["verify"]["threads"]
    resources:
        transfers=1,
        runtime=get_runtime("catch_up"),
    params:
        job=get_job("catch_up", "catch_up_night", needs=["streams", "remote", "verify"]),
    shell:
        "{params.job} --output {output:q} --log {log:q} --threads {threads}"


rule back_up_night:
    input:
        get_night_marker("caughtup"),
        get_night_inputs,
    output:
        get_night_marker("backedup"),
    log:
        get_log("backedup", night_level=True),
    conda:
        "../envs/desitransfer.yaml"
    threads: config["verify"]["threads"]
    resources:
        tape=1,
        runtime=get_runtime("backup"),
    params:
        job=get_job(
            "backup",
            "back_up_night",
            # remote and verify: the last catch-up, right before the archive is made
            needs=["streams", "backup", "remote", "verify"],
            extra=get_backup_arguments,
        ),
    shell:
        "{params.job} --output {output:q} --log {log:q} --threads {threads}"


rule back_up_late_exposures:
    input:
        get_late_inputs,
    output:
        get_night_marker("backedup.{index}"),
    log:
        get_log("backedup.{index}", night_level=True),
    conda:
        "../envs/desitransfer.yaml"
    threads: 1
    resources:
        tape=1,
        runtime=get_runtime("backup"),
    params:
        job=get_job(
            "backup",
            "back_up_late_exposures",
            needs=["streams", "backup"],
            extra=get_backup_arguments,
        ),
    shell:
        "{params.job} --output {output:q} --log {log:q} --threads {threads}"


rule recall_from_tape:
    input:
        get_recall_inputs,
    output:
        get_recall_marker(),
    log:
        get_recall_log(),
    conda:
        "../envs/desitransfer.yaml"
    threads: config["verify"]["threads"]
    resources:
        tape=1,
        runtime=get_runtime("recall"),
    params:
        job=get_job("recall", "recall_from_tape", needs=["streams", "backup"]),
    shell:
        "{params.job} --output {output:q} --log {log:q} --threads {threads}"
