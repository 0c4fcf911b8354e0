// A Node.js client of imagesvc.v1.ImageService, used by the test suite to prove the API (and its
// rich errors) work from another language.
//
//   node clients/node/process.mjs TARGET IN OUT GOOGLEAPIS_PROTO_DIR
//
// Resizes IN to 100 px wide WebP into OUT, then sends bytes that are not an image and decodes the
// google.rpc.Status it gets back. Prints one JSON object per call on stdout.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const [target, input, output, googleProtos] = process.argv.slice(2);
const protos = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "protos");

const definition = protoLoader.loadSync("imagesvc/v1/image_service.proto", {
  includeDirs: [protos],
  enums: String,
  longs: Number,
  defaults: true,
});
const { ImageService } = grpc.loadPackageDefinition(definition).imagesvc.v1;
const client = new ImageService(target, grpc.credentials.createInsecure(), {
  "grpc.max_send_message_length": 64 << 20,
  "grpc.max_receive_message_length": 64 << 20,
});

const root = new protobuf.Root();
root.resolvePath = (_origin, file) => join(googleProtos, file);
root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"]);
const Status = root.lookupType("google.rpc.Status");
const ErrorInfo = root.lookupType("google.rpc.ErrorInfo");

function processImage(data) {
  const request = {
    source: { data },
    pipelines: [{ operations: [{ resize: { width: 100 } }] }],
    output: { format: "IMAGE_FORMAT_WEBP", quality: 75 },
  };
  const deadline = new Date(Date.now() + 30_000);
  return new Promise((resolve, reject) =>
    client.processImage(request, { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    ),
  );
}

function errorInfo(error) {
  const raw = error.metadata.get("grpc-status-details-bin")[0];
  const status = Status.decode(raw);
  const info = status.details.find((any) => any.type_url.endsWith("google.rpc.ErrorInfo"));
  return ErrorInfo.decode(info.value);
}

const response = await processImage(readFileSync(input));
writeFileSync(output, response.data);
console.log(
  JSON.stringify({
    call: "ok",
    format: response.format,
    width: response.width,
    height: response.height,
    detections: response.detections.length,
  }),
);

try {
  await processImage(Buffer.from("this is not an image"));
  console.log(JSON.stringify({ call: "junk", unexpected: "success" }));
} catch (error) {
  const info = errorInfo(error);
  console.log(
    JSON.stringify({
      call: "junk",
      code: grpc.status[error.code],
      reason: info.reason,
      domain: info.domain,
    }),
  );
}
client.close();
