// Drives tus-js-client (Node) for the interop tests. Input: one JSON object in argv[2]:
// {endpoint, uploadUrl?, file, token, chunkSize, metadata, overridePatchMethod?, abortAfter?}
// Output: one JSON line {url, offset, done}. With abortAfter, the upload is aborted (the
// client thrown away) once at least that many bytes were acknowledged.
import { readFileSync } from "node:fs";
import { Upload } from "tus-js-client";

const args = JSON.parse(process.argv[2]);
const data = readFileSync(args.file);

const result = await new Promise((resolve, reject) => {
  let acknowledged = 0;
  const upload = new Upload(data, {
    endpoint: args.endpoint,
    uploadUrl: args.uploadUrl ?? null,
    chunkSize: args.chunkSize,
    metadata: args.metadata,
    headers: { Authorization: `Token ${args.token}` },
    overridePatchMethod: Boolean(args.overridePatchMethod),
    retryDelays: [100, 500, 1000],
    storeFingerprintForResuming: false,
    onChunkComplete(chunkSize, bytesAccepted) {
      acknowledged = bytesAccepted;
      if (args.abortAfter && bytesAccepted >= args.abortAfter && bytesAccepted < data.length) {
        upload.abort().then(() => resolve({ url: upload.url, offset: acknowledged, done: false }));
      }
    },
    onSuccess() {
      resolve({ url: upload.url, offset: data.length, done: true });
    },
    onError(error) {
      reject(error);
    },
  });
  upload.start();
});
console.log(JSON.stringify(result));
