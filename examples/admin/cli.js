#!/usr/bin/env node
'use strict';
/**
 * A small command line around admin.js; every answer is JSON on stdout.
 *
 *   node cli.js HOME models [--all]
 *   node cli.js HOME enable KEY | disable KEY
 *   node cli.js HOME rename KEY NAME          (rename KEY --reset: back to the detected name)
 *   node cli.js HOME request FILE.json        (or - for stdin) -> {"id": N}
 *   node cli.js HOME status ID [--wait SECONDS]
 *   node cli.js HOME run RUN_ID
 *   node cli.js HOME metrics RUN_ID
 *   node cli.js HOME cancel RUN_ID
 *   node cli.js HOME pull REPO[@REV] [--name FOLDER] [--allow-pickle] [--wait SECONDS]
 *   node cli.js HOME downloads [--active]
 *   node cli.js HOME download ID [--wait SECONDS]
 *   node cli.js HOME cancel-download ID
 *
 * Errors go to stderr as "Error: ..." with exit code 1 (2 for a usage error).
 */

const fs = require('node:fs');
const admin = require('./admin');

const USAGE = `usage: node cli.js HOME COMMAND [ARGS]
commands:
  models [--all]              the catalog (--all: with models that are gone)
  enable KEY | disable KEY    allow or forbid training a model
  rename KEY NAME | --reset   set the display name (--reset: the detected name)
  request FILE.json | -       queue a training request; prints its row id
  status ID [--wait SECONDS]  the verdict (and run) of a request; --wait until decided
  run RUN_ID                  one run with each model's losses
  metrics RUN_ID              the run's live_metrics.json
  cancel RUN_ID               cancel a queued or running run
  pull REPO[@REV] [--name FOLDER] [--allow-pickle] [--wait SECONDS]
                              download a base model from the Hub; prints its id (with
                              --wait: the download once it ended, or as it stands then)
  downloads [--active]        every download (--active: pending and running ones)
  download ID [--wait SECONDS]
                              one download's status and progress; --wait until it ends
  cancel-download ID          cancel a pending or running download`;

const DOWNLOAD_ENDED = ['succeeded', 'failed', 'cancelled'];

class UsageError extends Error {}

function need(args, n, what) {
  if (args.length < n) throw new UsageError(`missing ${what}`);
}

function sleep(ms) {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** The value after `flag` in args (undefined when absent), and args without the two. */
function option(args, flag) {
  const at = args.indexOf(flag);
  if (at < 0) return [undefined, args];
  if (at + 1 >= args.length) throw new UsageError(`${flag} needs a value`);
  return [args[at + 1], [...args.slice(0, at), ...args.slice(at + 2)]];
}

function waitSeconds(args) {
  const [value] = option(args, '--wait');
  if (value === undefined) return 0;
  const seconds = Number(value);
  if (!Number.isFinite(seconds) || seconds < 0) {
    throw new UsageError(`--wait takes a number of seconds, got ${JSON.stringify(value)}`);
  }
  return seconds;
}

function followDownload(id, seconds) {
  const deadline = Date.now() + seconds * 1000;
  let download = admin.download(id);
  while (!DOWNLOAD_ENDED.includes(download.status) && Date.now() < deadline) {
    sleep(200);
    download = admin.download(id);
  }
  return download;
}

function main(argv) {
  if (argv.length < 2 || argv.includes('-h') || argv.includes('--help')) {
    throw new UsageError(argv.length < 2 ? 'missing HOME or COMMAND' : '');
  }
  const [home, command, ...args] = argv;
  admin.open(home);
  try {
    switch (command) {
      case 'models':
        return admin.listModels({ includeMissing: args.includes('--all') });
      case 'enable':
      case 'disable':
        need(args, 1, 'KEY');
        return admin.setEnabled(args[0], command === 'enable');
      case 'rename':
        need(args, 2, 'KEY and NAME (or --reset)');
        return admin.setDisplayName(args[0], args[1] === '--reset' ? null : args[1]);
      case 'request': {
        need(args, 1, 'FILE.json (or - for stdin)');
        const text = fs.readFileSync(args[0] === '-' ? 0 : args[0], 'utf8');
        return { id: admin.requestTraining(text) };
      }
      case 'status': {
        need(args, 1, 'ID');
        const id = Number(args[0]);
        const waitAt = args.indexOf('--wait');
        const seconds = waitAt >= 0 ? Number(args[waitAt + 1] ?? 60) : 0;
        const deadline = Date.now() + seconds * 1000;
        let status = admin.requestStatus(id);
        while (status.status === 'pending' && Date.now() < deadline) {
          sleep(200);
          status = admin.requestStatus(id);
        }
        return status;
      }
      case 'run':
        need(args, 1, 'RUN_ID');
        return admin.run(args[0]);
      case 'metrics':
        need(args, 1, 'RUN_ID');
        return admin.liveMetrics(args[0]);
      case 'cancel':
        need(args, 1, 'RUN_ID');
        return admin.cancel(args[0]);
      case 'pull': {
        const seconds = waitSeconds(args);
        let [folder, rest] = option(args, '--name');
        [, rest] = option(rest, '--wait');
        const allowPickle = rest.includes('--allow-pickle');
        rest = rest.filter((a) => a !== '--allow-pickle');
        need(rest, 1, 'REPO[@REV]');
        if (rest.length > 1) throw new UsageError(`unexpected ${JSON.stringify(rest[1])}`);
        const id = admin.pullModel(rest[0], { folder, allowPickle });
        return seconds > 0 ? followDownload(id, seconds) : { id };
      }
      case 'downloads':
        return admin.listDownloads({ active: args.includes('--active') });
      case 'download':
        need(args, 1, 'ID');
        return followDownload(Number(args[0]), waitSeconds(args));
      case 'cancel-download':
        need(args, 1, 'ID');
        return admin.cancelDownload(Number(args[0]));
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } finally {
    admin.close();
  }
}

try {
  const result = main(process.argv.slice(2));
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
} catch (err) {
  if (err instanceof UsageError) {
    if (err.message) process.stderr.write(`Error: ${err.message}\n`);
    process.stderr.write(`${USAGE}\n`);
    process.exitCode = 2;
  } else {
    process.stderr.write(`Error: ${err.message}\n`);
    process.exitCode = 1;
  }
}
