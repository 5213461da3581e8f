"""A Telegram bot that answers through the confidential network.

Run `cocoon serve` beside it (it verifies every worker, seals each message to
it and checks each receipt and charge), then:

    TELEGRAM_BOT_TOKEN=123:ABC COCOON_API=http://127.0.0.1:8000/v1 \
        COCOON_MODEL=smollm2-135m-instruct python3 bot.py

The bot's server sees its users' messages (Telegram delivers them to it); the
GPU owner, the proxy and anyone on the path see only sealed bytes. For a Mini
App whose server must not see them either, see `cocoon sponsor` in the README.

TELEGRAM_API points the bot at another Bot API server (the tests use a fake
one on loopback); the default is Telegram's.
"""

import os

import openai
from telegram import Update
from telegram.ext import Application, ContextTypes, MessageHandler, filters


def main() -> None:
    token = os.environ["TELEGRAM_BOT_TOKEN"]
    api = os.environ.get("COCOON_API", "http://127.0.0.1:8000/v1")
    model = os.environ.get("COCOON_MODEL", "smollm2-135m-instruct")
    bot_api = os.environ.get("TELEGRAM_API", "https://api.telegram.org")
    max_tokens = int(os.environ.get("COCOON_MAX_TOKENS", "256"))
    # cocoon serve holds the account key; the SDK's key is not used.
    client = openai.AsyncOpenAI(base_url=api, api_key="unused")

    async def answer(update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        try:
            r = await client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": update.message.text}],
                max_tokens=max_tokens,
            )
        except openai.APIError as e:
            await update.message.reply_text(f"Sorry, no answer this time ({e.__class__.__name__}).")
            return
        cost = (r.model_extra or {}).get("cocoon", {}).get("cost_nanoton")
        footer = f"\n\n(answered in a verified enclave; {cost} nanoTON)" if cost is not None else ""
        await update.message.reply_text((r.choices[0].message.content or "") + footer)

    app = Application.builder().token(token).base_url(f"{bot_api}/bot").build()
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, answer))
    app.run_polling(poll_interval=0.2, timeout=1)


if __name__ == "__main__":
    main()
