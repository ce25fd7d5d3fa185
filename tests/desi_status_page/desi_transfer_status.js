// Reads desi_transfer_status_YEAR.json as DESI's status page does:
// {"NIGHT": {"EXPID": [[stage, success, ms], ...]}}, stage 0 rsync, 1 checksum,
// 2 backup; for each stage the newest row counts. A night is green when every
// stage of every exposure succeeded, red when one failed, yellow when one is
// missing. ?year=YYYY picks the file (default: this year), ?all=1 every night
// (default: the newest 10).
"use strict";
var STAGES = ["rsync", "checksum", "backup"];

function pad(expid) {
    var text = "" + expid;
    while (text.length < 8) text = "0" + text;
    return text;
}

function stagesOf(rows) {
    var out = {};
    STAGES.forEach(function (name) { out[name] = {success: false, stamp: 0}; });
    rows.forEach(function (row) {
        var name = STAGES[row[0]];
        if (name !== undefined && row[2] > out[name].stamp) {
            out[name] = {success: row[1] === 1, stamp: row[2]};
        }
    });
    return out;
}

function nightClass(exposures) {
    var result = "btn-success";
    for (var i = 0; i < exposures.length; i++) {
        for (var j = 0; j < STAGES.length; j++) {
            var stage = exposures[i].stages[STAGES[j]];
            if (!stage.success) {
                if (stage.stamp > 0) return "btn-danger";
                result = "btn-warning";
            }
        }
    }
    return result;
}

function element(tag, attributes, text) {
    var node = document.createElement(tag);
    Object.keys(attributes).forEach(function (k) { node.setAttribute(k, attributes[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
}

function show(data, year, all) {
    var content = document.getElementById("content");
    var nights = Object.keys(data).sort().reverse();
    if (!all) nights = nights.slice(0, 10);
    document.getElementById("displayTitle").textContent =
        "Showing " + (all ? "all" : "most recent 10") + " Nights from " + year;
    nights.forEach(function (night) {
        var exposures = Object.keys(data[night]).sort().reverse().map(function (e) {
            return {expid: pad(e), stages: stagesOf(data[night][e])};
        });
        var row = element("div", {id: night, "class": "row"});
        var p = element("p", {id: "p" + night}, "Night " + night + " ");
        p.appendChild(element("button", {id: "show" + night,
                                         "class": "btn " + nightClass(exposures)}, "Show"));
        row.appendChild(p);
        var table = element("table", {id: "t" + night});
        exposures.forEach(function (exposure) {
            var tr = element("tr", {id: "e" + night + "/" + exposure.expid});
            tr.appendChild(element("td", {}, exposure.expid));
            STAGES.forEach(function (name) {
                var stage = exposure.stages[name];
                var css = "table-warning", text = "INCOMPLETE";
                if (stage.stamp !== 0) {
                    css = stage.success ? "table-success" : "table-danger";
                    text = new Date(stage.stamp).toISOString();
                }
                tr.appendChild(element("td", {"class": css, "data-stage": name}, text));
            });
            table.appendChild(tr);
        });
        row.appendChild(table);
        content.appendChild(row);
    });
}

document.addEventListener("DOMContentLoaded", function () {
    var query = new URLSearchParams(window.location.search);
    var year = query.get("year") || "" + new Date().getUTCFullYear();
    var request = new XMLHttpRequest();
    // Synchronous, so that the page is complete when it has loaded.
    request.open("GET", "desi_transfer_status_" + year + ".json", false);
    request.send();
    if (request.status !== 200) {
        document.getElementById("content").textContent = "no status file for " + year;
        return;
    }
    show(JSON.parse(request.responseText), year, query.get("all") === "1");
});
