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
  cancel RUN_ID               cancel a queued or running run`;

class UsageError extends Error {}

function need(args, n, what) {
  if (args.length < n) throw new UsageError(`missing ${what}`);
}

function sleep(ms) {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
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
