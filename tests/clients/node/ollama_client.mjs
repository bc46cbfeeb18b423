// Drives pycompat's Ollama API (/api) with ollama-js (npm `ollama`), every case in one run:
//
//   node ollama_client.mjs BASE_URL
//
// BASE_URL is the server's root (no /v1). Prints one JSON object, case by case,
// of what the library handed back; tests/clients/test_ollama_node.py judges it.
import { Ollama } from "ollama";

const CHAT_MODEL = "smollm2-135m-instruct";
const EMBEDDING_MODEL = "all-minilm-l6-v2";
const GREEDY = { temperature: 0, num_predict: 12 };

const [host] = process.argv.slice(2);
const ollama = new Ollama({ host });

const weatherTool = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Get the current weather for a city.",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
};

const out = {};

const listed = await ollama.list();
out.list = listed.models.map((m) => ({ name: m.name, model: m.model, size: m.size, family: m.details.family }));

const shown = await ollama.show({ model: CHAT_MODEL });
out.show = { capabilities: shown.capabilities, architecture: shown.model_info["general.architecture"], template: shown.template };

const messages = [{ role: "user", content: "Name three colors." }];
const chat = await ollama.chat({ model: CHAT_MODEL, messages, options: GREEDY });
out.chat = { content: chat.message.content, done: chat.done, done_reason: chat.done_reason, eval_count: chat.eval_count };

const pieces = [];
for await (const part of await ollama.chat({ model: CHAT_MODEL, messages, options: GREEDY, stream: true })) {
  pieces.push(part.message.content);
  if (part.done) out.stream_final = { done_reason: part.done_reason, eval_count: part.eval_count };
}
out.stream = pieces;

const generated = await ollama.generate({ model: CHAT_MODEL, prompt: "Say hello.", options: GREEDY });
out.generate = { response: generated.response, context_length: generated.context.length,
                 prompt_eval_count: generated.prompt_eval_count, eval_count: generated.eval_count };

const embedded = await ollama.embed({ model: EMBEDDING_MODEL, input: ["The cat sleeps.", "A kitten naps."] });
out.embed = { count: embedded.embeddings.length, dimensions: embedded.embeddings[0].length };

const schema = { type: "object", properties: { color: { type: "string", maxLength: 20 } }, required: ["color"] };
const formatted = await ollama.chat({ model: CHAT_MODEL, format: schema, options: { temperature: 0 },
                                      messages: [{ role: "user", content: "What color is the sky? Answer in JSON." }] });
out.format = formatted.message.content;

const called = await ollama.chat({ model: CHAT_MODEL, tools: [weatherTool], options: { temperature: 0 },
                                   messages: [{ role: "user", content: "What is the weather in Paris? Call the tool." }] });
out.tools = called.message.tool_calls;

try {
  await ollama.chat({ model: "llama3.2", messages });
  out.error = null;
} catch (e) {
  out.error = { name: e.name, status_code: e.status_code, message: e.error ?? e.message };
}

console.log(JSON.stringify(out));
