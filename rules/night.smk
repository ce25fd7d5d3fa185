# Night-level stages: the morning catch-up of late files and the backup to tape.
# Both wait for every listed exposure of the night to be installed.


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
    script:
        "../scripts/catch_up.py"


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
    params:
        exposures=lambda wc: get_night_expids(wc.stream, wc.night),
        held=lambda wc: get_held_expids(wc.stream, wc.night),
    script:
        "../scripts/backup.py"


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
    params:
        exposures=lambda wc: get_night_expids(wc.stream, wc.night),
        held=lambda wc: get_held_expids(wc.stream, wc.night),
    script:
        "../scripts/backup.py"
