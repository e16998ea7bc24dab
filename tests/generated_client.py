"""Use a served project through a client generated from its OpenAPI document.

Run by `nox -s openapi`, which generates the package `api_client` with
openapi-python-client and puts it on PYTHONPATH: `python tests/generated_client.py URL`.
A generated client sends every field its model holds a value for, documented
defaults included, so this is where a wrong document shows: a PATCH of one field
must leave the others as they were.
"""

import sys
from http import HTTPStatus

from api_client import Client
from api_client.api.items import create_item, get_item, list_items, update_item
from api_client.models import Item, ItemPatch
from api_client.types import Response

DESCRIPTION = "Brass, 40 cm"


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"generated client: FAILED: {message}")
    print(f"generated client: ok: {message}")


def check_status(response: Response, status: HTTPStatus, message: str) -> None:
    if response.status_code != status:
        answer = f"{response.status_code} {response.content[:500]!r}"
        raise SystemExit(f"generated client: FAILED: {message}: answered {answer}")
    print(f"generated client: ok: {message}")


def main(url: str) -> None:
    with Client(base_url=url, raise_on_unexpected_status=True) as client:
        body = Item(name="Lamp", description=DESCRIPTION)
        created = create_item.sync_detailed(client=client, body=body)
        check_status(created, HTTPStatus.CREATED, "POST creates an item")
        item = created.parsed.data.item
        check(item.description == DESCRIPTION, "the new item has its description")

        patched = update_item.sync_detailed(
            client=client, item_id=item.id, body=ItemPatch(name="Desk lamp")
        )
        check_status(patched, HTTPStatus.OK, "PATCH of the name alone")
        changed = patched.parsed.data.item
        check(changed.name == "Desk lamp", "PATCH changed the name")
        check(
            changed.description == DESCRIPTION,
            f"PATCH kept the description (it is {changed.description!r})",
        )

        read = get_item.sync_detailed(client=client, item_id=item.id)
        check_status(read, HTTPStatus.OK, "GET reads the item")
        check(read.parsed.data.item.to_dict() == changed.to_dict(), "as PATCH left it")

        page = list_items.sync_detailed(client=client, page=1, per_page=10)
        check_status(page, HTTPStatus.OK, "GET lists the items")
        listed = page.parsed.data
        check(
            [entry.name for entry in listed.items] == ["Desk lamp"]
            and listed.total == 1,
            "the list holds the one item",
        )


if __name__ == "__main__":
    main(sys.argv[1])
