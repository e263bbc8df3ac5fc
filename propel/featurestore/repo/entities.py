"""Entities: who and what features describe."""

from feast import Entity, ValueType

customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING,
                  description="A resolved person (see identity resolution)")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="A catalogue item")
