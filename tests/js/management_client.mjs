// Drives the management API with the AWS SDK for JavaScript v3, as a Node.js backend would.
// Usage: node management_client.mjs ENDPOINT CONNECTION_ID; prints one JSON line per step.
import {
  ApiGatewayManagementApiClient, PostToConnectionCommand, GetConnectionCommand, DeleteConnectionCommand,
} from "@aws-sdk/client-apigatewaymanagementapi";

const [endpoint, cid] = process.argv.slice(2);
const client = (secret) => new ApiGatewayManagementApiClient({
  endpoint, region: "eu-west-1", maxAttempts: 1,
  credentials: { accessKeyId: "AKIDGATEWAYTEST", secretAccessKey: secret },
});
const ok = client("gateway-test-secret-key");
const out = (step, value) => console.log(JSON.stringify({ step, ...value }));
const failure = async (step, promise) => {
  try { await promise; out(step, { error: null }); }
  catch (e) { out(step, { error: e.name, status: e.$metadata?.httpStatusCode }); }
};

await ok.send(new PostToConnectionCommand({ ConnectionId: cid, Data: new TextEncoder().encode("from js") }));
const info = await ok.send(new GetConnectionCommand({ ConnectionId: cid }));
out("get", { connectedAt: info.ConnectedAt instanceof Date, lastActiveAt: info.LastActiveAt instanceof Date,
             sourceIp: info.Identity?.SourceIp });
await failure("too_large", ok.send(new PostToConnectionCommand({ ConnectionId: cid, Data: new Uint8Array(200 * 1024) })));
await failure("bad_secret", client("wrong").send(new GetConnectionCommand({ ConnectionId: cid })));
await ok.send(new DeleteConnectionCommand({ ConnectionId: cid }));
await failure("after_delete", ok.send(new GetConnectionCommand({ ConnectionId: cid })));
