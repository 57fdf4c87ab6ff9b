// A Node.js backend and its WebSocket clients against a wsgateway node, for
// tests/test_sdk_javascript.py: the management API through the AWS SDK for JavaScript v3,
// clients through the `ws` package with the token offered as a subprotocol, as a browser does.
// Usage: NODE_PATH=tests/.npm/node_modules node sdk_client.cjs '<json: see the test>'.
// Prints one JSON line per step; the test checks them. Every wait is bounded.
"use strict";
const WebSocket = require("ws");
const {
  ApiGatewayManagementApiClient, PostToConnectionCommand, GetConnectionCommand, DeleteConnectionCommand,
} = require("@aws-sdk/client-apigatewaymanagementapi");

const args = JSON.parse(process.argv[2]);
const MAX = 131072;
const out = (step, value) => console.log(JSON.stringify({ step, ...value }));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const client = (options = {}) => new ApiGatewayManagementApiClient({
  endpoint: args.endpoint, region: args.region,
  credentials: { accessKeyId: args.accessKey, secretAccessKey: args.secret }, ...options,
});
const post = (c, cid, data) => c.send(new PostToConnectionCommand({ ConnectionId: cid, Data: data }));

async function until(check, what, ms = 5000) {
  for (const end = Date.now() + ms; !check();) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

// Up to ms for n frames to arrive (they may not: the step reports what did).
const arrived = (frames, n, ms = 2000) => until(() => frames.length >= n, "frames", ms).catch(() => {});

// What a call ended with: its status and attempts, or the error the SDK threw.
async function outcome(promise) {
  try {
    const { $metadata } = await promise;
    return { ok: true, status: $metadata.httpStatusCode, attempts: $metadata.attempts };
  } catch (e) {
    return { ok: false, error: e.name, modeled: e.constructor.name === e.name, status: e.$metadata?.httpStatusCode,
             attempts: e.$metadata?.attempts, message: e.message, requestId: e.$metadata?.requestId };
  }
}

// A frame as the test compares it; long ones by their length.
const frame = ({ data, binary }) => binary ? { bytes: [...data] }
  : data.length > 64 ? { textLength: data.length } : { text: data.toString("utf8") };

async function open(token) {
  const ws = new WebSocket(args.wsUrl, [args.subprotocol, token], { headers: { "User-Agent": "sdk-test/1.0" } });
  const frames = [];
  ws.on("message", (data, binary) => frames.push({ data: Buffer.from(data), binary }));
  const closed = new Promise((resolve) => ws.on("close", (code, reason) => resolve({ code, reason: `${reason}` })));
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  ws.send(JSON.stringify({ action: "whoami" }));
  await until(() => frames.length, "whoami");
  const cid = JSON.parse(frames.shift().data).connectionId;
  return { ws, cid, frames, closed };
}

async function main() {
  const sdk = client();
  const a = await open(args.token);
  out("open", { protocol: a.ws.protocol });

  const posts = [];
  for (const data of ["héllo", new Uint8Array([0, 1, 255]), "", new Uint8Array(MAX).fill(97), new Uint8Array(MAX + 1)]) {
    posts.push(await outcome(post(sdk, a.cid, data)));
  }
  await arrived(a.frames, 4);
  out("posts", { outcomes: posts, frames: a.frames.splice(0).map(frame) });

  const info = await sdk.send(new GetConnectionCommand({ ConnectionId: a.cid }));
  out("get", {
    connectedAtIsDate: info.ConnectedAt instanceof Date, lastActiveAtIsDate: info.LastActiveAt instanceof Date,
    connectedAt: info.ConnectedAt?.toISOString(), lastActiveAt: info.LastActiveAt?.toISOString(),
    identity: info.Identity, requestId: info.$metadata.requestId,
  });

  // As the AWS docs write it, https://{api-id}.execute-api.{region}.amazonaws.com/{stage}, with a "/" after.
  const slash = await outcome(post(client({ endpoint: `${args.endpoint}/` }), a.cid, "slash"));
  await arrived(a.frames, 1);
  out("trailing_slash", { outcome: slash, frames: a.frames.splice(0).map(frame) });

  const wrong = client({ credentials: { accessKeyId: args.accessKey, secretAccessKey: "wrong-secret" } });
  const badSecret = await outcome(post(wrong, a.cid, "never"));
  await sleep(200);
  out("bad_secret", { outcome: badSecret, frames: a.frames.splice(0).map(frame) });

  // This machine's clock 10 minutes slow: AWS's 403 carries Date; the SDK sets its offset from
  // it and signs the retry anew.
  const realNow = Date.now;
  Date.now = () => realNow() - 10 * 60 * 1000;
  const skewed = client();
  const slowClock = await outcome(post(skewed, a.cid, "clock"));
  Date.now = realNow;
  await arrived(a.frames, 1);
  out("slow_clock", { outcome: slowClock, offsetS: Math.round(skewed.config.systemClockOffset / 1000),
                      frames: a.frames.splice(0).map(frame) });

  // A tenant whose usage plan allows one post a second: 429 LimitExceededException, which the
  // SDK retries by itself; every post that answered 200 is delivered once, the others never.
  const t = await open(args.throttledToken);
  const once = client({ maxAttempts: 1 });
  const throttled = [];
  for (const n of [1, 2]) throttled.push(await outcome(post(once, t.cid, `once-${n}`)));
  const retried = [];
  for (const n of [1, 2, 3]) retried.push(await outcome(post(sdk, t.cid, `retried-${n}`)));
  await sleep(300);
  out("throttled", { once: throttled, retried, frames: t.frames.splice(0).map(frame) });
  t.ws.close();

  out("delete", { outcome: await outcome(sdk.send(new DeleteConnectionCommand({ ConnectionId: a.cid }))),
                  closed: await a.closed });
  const gone = [
    await outcome(post(sdk, a.cid, "late")),
    await outcome(sdk.send(new GetConnectionCommand({ ConnectionId: a.cid }))),
    await outcome(sdk.send(new DeleteConnectionCommand({ ConnectionId: a.cid }))),
    await outcome(sdk.send(new GetConnectionCommand({ ConnectionId: "L0SM9cOFvHcCIhw=" }))),  // never existed
  ];
  out("gone", { outcomes: gone });
}

main().then(() => process.exit(0), (error) => {
  console.error(error?.stack ?? error);
  process.exit(1);
});
